"""The kernel-aware route: estimate a photo's blur kernel blind, then deconvolve with it; the network where
that is the better tool (sharp photos, an estimate the schedules disagree on, a kernel too small to be shake).

Networks trained on synthetic blur generalise poorly to recorded camera shake (curved, uneven paths); classical
blind deconvolution does well there and poorly on what networks do well. `route.KernelRouteEngine` puts the two
behind the one `Engine` interface, so every job runs it by naming a route (`--model deblur-shake-v1`); that route
is the shipped default (`deblur.models.shipped.DEFAULT`).
"""
