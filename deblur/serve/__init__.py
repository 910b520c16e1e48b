"""The Ray Serve endpoint (`deblur.serve.app:app`, or `build_app(args)` for serve configs)."""
