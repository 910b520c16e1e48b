"""`KernelRouteEngine`: per photo, the network or a blind-kernel deconvolution, whichever suits its blur.

The decision, in order, cheapest first (its numbers were set on the dev split of `benchmarks/shake.py` and on
the sample photos that install with scikit-image, never on the benchmark's held-out split):
0. **tiny**: a photo whose shorter side is under `min_side` goes to the network: the estimator was only ever
   tried on crops of 255 px and up, and a few edges cannot pin down a kernel of up to 55 px.
1. **sharp**: a photo whose blur score (`deblur.metrics.blur_score`) is below `sharp_below` goes to the
   network, which leaves sharp photos as they are; a blind estimator invents a kernel for a sharp photo (it
   fell to 13-17 dB on the dev photos).
2. **estimate**: on the most textured `crop`² window of the luma, one kernel per schedule of `configs`, sizes
   25, 35, 45 and 55 px; the two larger only when the two smaller agree below `early_agreement`, as they do
   once the blur outgrows 25 px, or when the blur score is under `mild_below`. Two that agree at 0.90-0.97
   can share a wrong kernel: at 0.9 the sample's rocket (linear blur) stopped at two agreeing 0.91 and fell
   below its input (-0.54 dB), where four disagree and send it to the network; on 34 dev streak photos 0.97
   gained +2.86 dB against 0.9's +2.73. The estimates refine their kernels at full size only on clean photos
   (NSR at the floor): on noisy ones refining fits the noise and the schedules disagree more. Each size fails
   on some photos: of the kernels another schedule confirms, the one whose deconvolution of the window is
   sparsest, weighed against how far it rings past black and white (`pick`).
3. **unsure**: the medoid's agreement with the other schedules below `min_agreement` → the network (the
   schedules found different things). Blur scores of sharp and of lightly shaken photos overlap (0.16-0.46
   and 0.40 up): under `mild_below` the agreement must reach `mild_agreement` (the schedules agreed 0.64-0.77
   on the sharp dev photos that got an estimate, 0.80-0.99 on shaken ones). A pick the agreement does not
   carry is still trusted when another schedule confirms it at `vouch_confirmation` and its deconvolution of
   the window has sparser gradients than the window itself (ratio at most `vouch_sparsity`): one schedule
   that fails drags the medoid's agreement down though two others found the blur. On Levin-like dev crops
   this deconvolved 7 of the 11 photos the agreement sent to the network (+4.6 → +5.6 dB over 34); no sharp
   photo qualified (their deconvolutions, over 9 px, were 1.07-2.75 times less sparse than the photo).
4. **small**: the picked kernel or the medoid under `min_size` px across → the network. Sharp photos that
   passed the gate got confident 3-7 px kernels (sample photos and dev CBSD68 at half size), and deconvolving
   with them left them at 28-36 dB where the network keeps them near 50; the route is for blur of 9 px and up.
5. **shake**: otherwise Wiener deconvolution of each channel with that kernel, about its exact centre of mass
   (`deconvolve.centre_of_mass`), its noise-to-signal ratio set by the photo's noise
   (`deconvolve.noise_adaptive_nsr`). Straight streaks too: on dev photos with 9-21 px streaks deconvolving
   gained +3.5 dB where the network gains +2.2. (Version 1 sent streaks to the network: with kernels centred
   only to the nearest pixel, deconvolution lost there.) A noisy photo (noise σ read in its flattest parts at
   `tv_from_sigma` levels or more, `deconvolve.flat_noise_sigma`) is deconvolved by total variation instead
   (`deconvolve`): on the 28 noisy dev photos the route deconvolved, +4.20 → +5.13 dB. The whole-photo noise
   estimate would not do as the gate: fine texture reads as noise there, and TV flattened three textured clean
   streak photos of `quality.py` by 1.5-3 dB.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace

import cv2
import numpy as np

from ..data.synth import normalise_kernel
from ..inference.engine import Engine, EngineInfo, check_batch, cpu_threads
from ..metrics import blur_score
from .deconvolve import centre_of_mass, flat_noise_sigma, noise_adaptive_nsr, total_variation, wiener
from .estimate import EstimateConfig, consensus, estimate_kernel, gradient_sparsity, kernel_similarity, similarities

SHAKE_CONFIGS = (
    EstimateConfig(ksize=25, cg_iters=3, refine_iters=3),
    EstimateConfig(ksize=35, cg_iters=3, refine_iters=3),
    EstimateConfig(ksize=45, iters=8, cg_iters=3, refine_iters=3),
    EstimateConfig(ksize=55, iters=8, cg_iters=3, refine_iters=3),
)


@dataclass(frozen=True)
class RouteRecipe:
    """A named route: the network it falls back on and the rule that picks, per photo."""

    name: str
    network: str = "deblur-nafnet-v1"
    crop: int = 321
    configs: tuple[EstimateConfig, ...] = SHAKE_CONFIGS
    sharp_below: float = 0.35
    mild_below: float = 0.5
    early_agreement: float = 0.97
    refine_below_nsr: float = 0.0051  # the estimates' full-size refinement only for photos at the clean NSR floor
    tv_from_sigma: float = 1.1  # noise σ (8-bit levels, `flat_noise_sigma`) from which TV deconvolves, not Wiener
    tv_fidelity: float = 12.0  # a noisy photo's TV data weight, over its NSR (best of 6-24 on the dev split)
    pair_agreement: float = 0.8
    ringing: float = 200.0  # pick: sparsity × (1 + ringing × overshoot); best of 50-3000 on the dev split
    min_agreement: float = 0.75
    mild_agreement: float = 0.9
    vouch_confirmation: float = 0.85
    vouch_sparsity: float = 0.99
    min_size: int = 9
    min_side: int = 160  # photos smaller than about three of the largest schedule's kernels go to the network
    version: int = 5  # 2: refined kernels, exact centring, sparsest confirmed kernel; 3: tiny, early stop 0.97, vouch;
    # 4: the pick weighs ringing, the deconvolution fades its padding; 5: noisy photos deconvolved by TV

    def describe(self) -> dict:
        d = asdict(self)
        d["configs"] = [asdict(c) for c in self.configs]
        return d


#: shipped routes, by name (looked up before storage, like shipped models)
ROUTES = {r.name: r for r in (RouteRecipe("deblur-shake-v1"),)}


def route_recipe(name: str) -> RouteRecipe | None:
    return ROUTES.get(str(name))


@dataclass
class Decision:
    """What the route did with one photo and why (the bulk job's manifest and the benchmarks record it)."""

    route: str  # network | kernel
    reason: str  # tiny | sharp | unsure | small | shake
    blur_score: float | None  # None for a tiny photo, never scored
    agreement: float | None = None
    nsr: float | None = None
    sparsity: float | None = None  # the pick's deconvolved window ÷ the window, gradient ℓ1/ℓ2 (None: unconfirmed)
    kernel: np.ndarray | None = field(default=None, repr=False)
    estimates: int = 0  # how many schedules ran (2, or 4 when the first two disagreed)
    deconvolution: str | None = None  # wiener | tv (`deconvolve`), for the shake route

    @property
    def label(self) -> str:
        """The reason, "+tv" when the photo was deconvolved by total variation: what manifests and tables show."""
        return f"{self.reason}+tv" if self.deconvolution == "tv" else self.reason

    def summary(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items() if k != "kernel"}


def textured_crop(gray: np.ndarray, size: int) -> np.ndarray:
    """The size×size window (of 9 on a 3×3 grid) with the most gradient: edges are what a kernel is read from."""
    h, w = gray.shape
    if h <= size and w <= size:
        return gray
    size_h, size_w = min(size, h), min(size, w)
    best, pick = -1.0, gray[:size_h, :size_w]
    for top in np.linspace(0, h - size_h, 3).astype(int):
        for left in np.linspace(0, w - size_w, 3).astype(int):
            c = gray[top : top + size_h, left : left + size_w]
            energy = float(np.mean(np.abs(np.diff(c, axis=0))) + np.mean(np.abs(np.diff(c, axis=1))))
            if energy > best:
                best, pick = energy, c
    return pick


def estimate_side_by_side(
    crop: np.ndarray, configs: tuple[EstimateConfig, ...], threads: int | None = None
) -> list[np.ndarray]:
    """One centred kernel per schedule, the schedules in `threads` threads (None: one per CPU this worker may use,
    `cpu_threads`: Ray's share, else the machine's): the estimator is FFTs and numpy on arrays big enough to
    release the GIL (two estimates of a 1 Mpx photo: 2.5 s one after the other with scipy's threaded FFTs, 1.2 s
    side by side with one FFT thread each). The threads still lose about a third to each other: two schedules
    take 1.45× less time side by side than one after the other, where two processes take 1.85× less."""
    with ThreadPoolExecutor(max(1, min(len(configs), threads or cpu_threads()))) as pool:
        return [normalise_kernel(k) for k in pool.map(lambda cfg: estimate_kernel(crop, cfg), configs)]


def decide(rgb: np.ndarray, recipe: RouteRecipe, threads: int | None = None) -> Decision:
    """float H×W×3 RGB in [0, 1] → which route, with the kernel when it is the deconvolution; `threads`: for
    the estimates (`estimate_side_by_side`)."""
    if min(rgb.shape[:2]) < recipe.min_side:
        return Decision("network", "tiny", None)
    score = blur_score(rgb)
    if score < recipe.sharp_below:
        return Decision("network", "sharp", score)
    gray = cv2.cvtColor(np.ascontiguousarray(rgb, np.float32), cv2.COLOR_RGB2GRAY)
    crop = textured_crop(gray, recipe.crop)
    nsr = noise_adaptive_nsr(gray)
    configs = recipe.configs
    if nsr >= recipe.refine_below_nsr:  # refining fits the noise: without it, noisy dev photos +2.8 → +3.3 dB
        configs = tuple(replace(cfg, refine_iters=0) for cfg in configs)
    kernels = estimate_side_by_side(crop, configs[:2], threads)
    # two that agree are enough on a clearly blurred photo; in the band where sharp and mildly shaken photos
    # overlap, two agreeing schedules are weak evidence (a sharp dev photo at half size got two agreeing 0.94 on
    # a kernel that took it to 16 dB), so all four run and the stricter agreement below applies
    if score < recipe.mild_below or kernel_similarity(kernels[0], kernels[1]) < recipe.early_agreement:
        kernels += estimate_side_by_side(crop, configs[2:], threads)
    sims = similarities(kernels)
    best, agreement = consensus(sims)
    i, sparsity = pick(crop, kernels, sims, nsr, recipe.pair_agreement, best, recipe.ringing)
    k, n = kernels[i], len(kernels)
    if not trusted(recipe, score, agreement, confirmation(sims, i), sparsity):
        return Decision("network", "unsure", score, agreement, sparsity=sparsity, kernel=k, estimates=n)
    if min(max(k.shape), max(kernels[best].shape)) < recipe.min_size:  # the pick or the medoid
        return Decision("network", "small", score, agreement, sparsity=sparsity, kernel=k, estimates=n)
    noisy = recipe.tv_fidelity and flat_noise_sigma(gray) * 255 >= recipe.tv_from_sigma
    method = "tv" if noisy else "wiener"
    return Decision("kernel", "shake", score, agreement, nsr, sparsity, k, n, method)


def deconvolve(rgb: np.ndarray, d: Decision, recipe: RouteRecipe) -> np.ndarray:
    """The photo (float H×W×3 in [0, 1]) deconvolved as a shake decision says, about its kernel's centre of mass,
    clipped to [0, 1]: Wiener at the photo's NSR, or for a noisy photo total variation (data weight
    `tv_fidelity` over the NSR): Wiener either amplifies noise or blurs edges back, TV keeps edges and flattens
    the noise between (noisy dev photos +4.20 → +5.13 dB; clean ones lost with it, see
    `deconvolve.total_variation`)."""
    origin = centre_of_mass(d.kernel)
    if d.deconvolution == "tv":
        return np.clip(total_variation(rgb, d.kernel, recipe.tv_fidelity / d.nsr, origin), 0, 1)
    return np.clip(wiener(rgb, d.kernel, d.nsr, origin), 0, 1)


def confirmation(sims: np.ndarray, i: int) -> float:
    """Kernel i's best similarity to another schedule's (from `similarities`; 0 when it is alone)."""
    return float(max(np.delete(sims[i], i), default=0))


def trusted(recipe: RouteRecipe, score: float, agreement: float, confirmation: float, sparsity: float | None) -> bool:
    """Whether the schedules' pick may be deconvolved with: the medoid's `agreement` clears the bar of the photo's
    blur band, or the pick is vouched for: another schedule confirms it (`confirmation`, its best similarity to
    another) and its deconvolution is sparser than the window (`sparsity`, the ratio `pick` returns)."""
    if agreement >= (recipe.mild_agreement if score < recipe.mild_below else recipe.min_agreement):
        return True
    return sparsity is not None and confirmation >= recipe.vouch_confirmation and sparsity <= recipe.vouch_sparsity


def pick(
    crop: np.ndarray,
    kernels: list[np.ndarray],
    sims: np.ndarray,
    nsr: float,
    pair: float,
    medoid: int,
    ringing: float,
) -> tuple[int, float | None]:
    """Of the kernels another schedule confirms (similarity ≥ `pair`), the one whose deconvolution of the crop
    has the sparsest gradients, weighed against its ringing (`overshoot`, times `ringing`), with its sparsity
    over the crop's own; the medoid (and None) when none is confirmed.

    The medoid alone failed where two large schedules agreed on a wrong shape and two small ones on the right
    one; sparsity alone picked lone outliers. Both together, on the dev split (every estimate deconvolved about
    its centre of mass): gray 13-27 px +6.3 dB against the medoid's +5.5, colour 15-45 px +6.4 against +6.0,
    noisy +4.2 against +3.8.

    Sparsity alone also liked kernels with a wide faint halo around a streak (a 17×5 streak read as 27×25 px):
    deconvolving with one rings, and ringing can be sparse too (ℓ1/ℓ2 0.85 where the right kernel gave 0.97), but
    it throws values past black and white, which a photo's sharp scene does not have. `overshoot` sees that. On
    the dev split, weighing it (`RouteRecipe.ringing`): 102 streak pairs +2.82 → +3.29 dB, 11 → 4 below their
    input; Levin-like gray +5.67 → +5.92; noisy +3.47 → +3.51; colour unchanged (+6.31)."""
    confirmed = [i for i in range(len(kernels)) if confirmation(sims, i) >= pair]
    if not confirmed:
        return medoid, None
    margin = 20  # the deconvolution's own borders left out
    inner = (slice(margin, -margin), slice(margin, -margin)) if min(crop.shape) > 4 * margin else ...
    sparsity, scores = {}, {}
    for i in confirmed:
        sharp = wiener(crop, kernels[i], nsr, centre_of_mass(kernels[i]))[inner]
        sparsity[i] = gradient_sparsity(sharp)
        scores[i] = sparsity[i] * (1 + ringing * overshoot(sharp))
    best = min(scores, key=scores.get)
    return best, sparsity[best] / gradient_sparsity(crop[inner])


def overshoot(x: np.ndarray) -> float:
    """How far an image in [0, 1] strays outside it, on average: 0 for a photo, more the more a deconvolution
    rings."""
    return float(np.mean(np.abs(x - np.clip(x, 0, 1))))


class KernelRouteEngine(Engine):
    """An `Engine` over a network engine: each photo goes to the network or is deconvolved with its own
    estimated kernel (`decide`). `decisions` holds the last call's, one per photo."""

    def __init__(self, network: Engine, recipe: RouteRecipe, threads: int | None = None):
        self.network, self.recipe, self.threads = network, recipe, threads
        n = network.info
        self.info = EngineInfo(
            backend=n.backend,
            device=n.device,
            precision=n.precision,
            multiple=1,
            source=recipe.name,
            model_hash=f"{n.model_hash}+{recipe.name}.{recipe.version}",
            extra={**n.extra, "route": recipe.describe(), "network_source": n.source},
        )
        self.decisions: list[Decision] = []

    def configure_tiling(self, *args, **kwargs) -> "KernelRouteEngine":
        self.network.configure_tiling(*args, **kwargs)
        return self

    def fits(self, h: int, w: int) -> bool:
        return True  # the deconvolution takes any size; the network tiles for itself

    def deblur_batch(self, batch: np.ndarray) -> np.ndarray:
        batch = check_batch(batch).astype(np.float32, copy=False)
        out = np.empty_like(batch)
        self.decisions = []
        to_network = []
        for i, img in enumerate(batch):
            rgb = np.clip(img.transpose(1, 2, 0) * 0.5 + 0.5, 0, 1)
            d = decide(rgb, self.recipe, self.threads)
            self.decisions.append(d)
            if d.route == "kernel":
                out[i] = deconvolve(rgb, d, self.recipe).transpose(2, 0, 1) * 2 - 1
            else:
                to_network.append(i)
        if to_network:
            out[to_network] = self.network.deblur_batch(batch[to_network])
        return out

    def __repr__(self) -> str:
        return f"KernelRouteEngine({self.recipe.name}, network={self.network!r})"
