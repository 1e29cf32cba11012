"""One sweep of an occluder over an image: the three maps of Zeiler & Fergus's Fig. 7.

For each position of a square of one colour (top-left corners on a grid of `stride`, the
square inside the image, as Captum places its windows) one pass gives: the total activation
of the chosen feature map of `layer` (the one with the strongest activation in the clean
image), the probability of `label`, and the most probable class.

Methods: "brute" re-runs the whole network on a batch of occluded copies; "exact" is
incremental inference (`incremental.Incremental`), equal to brute force up to rounding;
"approximate" caps each layer's changed box at `tau` of its size and sweeps a coarse grid
first, then the fine grid only around the coarse positions that changed the outputs most,
interpolating the rest (Krypton's two approximations).
"""

from __future__ import annotations

import difflib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from convscope.analyses.occlusion.incremental import Incremental, Patch
from convscope.core.layers import LayerRef, resolve_layer
from convscope.data.images import preprocess
from convscope.errors import ConvscopeError
from convscope.models.info import ModelInfo, info_of

log = logging.getLogger(__name__)

METHODS = ("exact", "approximate", "brute")
DEFAULT_LAYERS = ("conv5", "head")  # the paper's layer 5; EfficientNet-Lite's last conv


@dataclass
class OcclusionResult:
    """Maps over occluder positions (rows: `ys`, columns: `xs`, the square's top-left corner)."""

    activation: np.ndarray  # ny x nx: total activation of feature map `channel` of `layer`
    probability: np.ndarray  # ny x nx: probability of `label`
    top_class: np.ndarray  # ny x nx: the most probable class
    top_probability: np.ndarray  # ny x nx: its probability
    computed: np.ndarray  # ny x nx: True where the position was run (not interpolated)
    ys: np.ndarray
    xs: np.ndarray
    patch: int
    stride: int
    fill: list[float]  # the occluder's value per input channel, in the model's input space
    fill_name: str
    layer: str
    channel: int
    label: int  # the first of `labels`
    class_names: dict[int, str]  # every class that appears in the maps, and the label
    clean_activation: float
    clean_probability: float
    clean_top: int
    image_size: tuple[int, int]
    method: str
    model: str = ""
    seconds: float = 0.0
    fallbacks: list[str] = field(default_factory=list)
    tau: float = 1.0
    labels: list[int] = field(default_factory=list)  # probability maps are summed over these

    def __post_init__(self) -> None:
        if not self.labels:
            self.labels = [self.label]

    def name_of(self, c: int) -> str:
        return self.class_names.get(int(c), f"class {int(c)}")

    @property
    def label_name(self) -> str:
        return "+".join(self.name_of(c) for c in self.labels)

    def centres(self) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates of the occluder's centre for each row and column of the maps."""
        return self.ys + self.patch / 2.0, self.xs + self.patch / 2.0

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(
            folder / "maps.npz",
            activation=self.activation,
            probability=self.probability,
            top_class=self.top_class,
            top_probability=self.top_probability,
            computed=self.computed,
            ys=self.ys,
            xs=self.xs,
        )
        meta = {
            "patch": self.patch,
            "stride": self.stride,
            "fill": self.fill,
            "fill_name": self.fill_name,
            "layer": self.layer,
            "channel": self.channel,
            "label": self.label,
            "class_names": {str(k): v for k, v in self.class_names.items()},
            "clean_activation": self.clean_activation,
            "clean_probability": self.clean_probability,
            "clean_top": self.clean_top,
            "image_size": list(self.image_size),
            "method": self.method,
            "model": self.model,
            "seconds": self.seconds,
            "fallbacks": self.fallbacks,
            "tau": self.tau,
            "labels": self.labels,
        }
        (folder / "occlusion.json").write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> OcclusionResult:
        folder = Path(folder)
        try:
            meta = json.loads((folder / "occlusion.json").read_text())
            with np.load(folder / "maps.npz") as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, KeyError) as e:
            raise ConvscopeError(
                f"{folder} does not hold a readable occlusion result ({e.__class__.__name__}); "
                "run `convscope occlude ... --out` again"
            ) from e
        meta["class_names"] = {int(k): v for k, v in meta["class_names"].items()}
        meta["image_size"] = tuple(meta["image_size"])
        return cls(**arrays, **meta)


# -- inputs ---------------------------------------------------------------------------------


def as_input(model: nn.Module, image: Any) -> Tensor:
    """The model's 3 x H x W input from a preprocessed tensor, a PIL image or an RGB array."""
    info = info_of(model)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
    if isinstance(image, Image.Image):
        return preprocess(image, info.preprocess)
    if not isinstance(image, Tensor):
        raise ConvscopeError(
            f"image must be a tensor, a PIL image or an RGB array, not {type(image).__name__}"
        )
    if image.dim() == 4 and image.shape[0] == 1:
        image = image[0]
    if image.dim() != 3 or not image.is_floating_point():
        raise ConvscopeError(
            f"image must be one float tensor C x H x W (preprocessed), got {tuple(image.shape)}"
        )
    return image.detach()


def fill_values(fill: str | Sequence[float], info: ModelInfo, channels: int) -> tuple[Tensor, str]:
    """The occluder's value per input channel, and a name for it.

    "mean": the preprocessing's mean colour (grey, as in the paper); "zero": 0 in the model's
    input (Captum's default baseline); "R,G,B" or a triple: a colour in 0..255.
    """
    pre = info.preprocess
    if isinstance(fill, str) and fill in ("mean", "zero"):
        if fill == "zero":
            return torch.zeros(channels), "zero"
        rgb: list[float] = list(pre.mean)
        name = "mean"
    else:
        if isinstance(fill, str):
            try:
                rgb = [float(v) for v in fill.split(",")]
            except ValueError as e:
                raise ConvscopeError(
                    f"fill {fill!r} is not mean, zero or R,G,B (three numbers 0..255)"
                ) from e
        else:
            rgb = [float(v) for v in fill]
        if len(rgb) != 3 or not all(0.0 <= v <= 255.0 for v in rgb):
            raise ConvscopeError(
                f"fill colour {fill!r} is out of range: give three values R,G,B in 0..255"
            )
        name = ",".join(f"{v:g}" for v in rgb)
    if channels != 3:
        raise ConvscopeError(f"a colour fill needs a 3-channel input; this one has {channels}")
    v = (torch.tensor(rgb) - torch.tensor(pre.mean)) / torch.tensor(pre.std)
    return v.float(), name


def resolve_label(label: int | str | None, names: Sequence[str] | None, classes: int) -> int | None:
    """A class index from an index or a class name (case, spaces and underscores ignored)."""
    if label is None:
        return None
    if isinstance(label, str) and label.strip().lstrip("-").isdigit():
        label = int(label)
    if isinstance(label, int):
        if not 0 <= label < classes:
            raise ConvscopeError(f"class {label} is out of range: the model has {classes} classes")
        return label
    if not names:
        raise ConvscopeError(
            f"this model has no class names; give the label {label!r} as an index 0..{classes - 1}"
        )

    def norm(s: str) -> str:
        return s.lower().replace("_", " ").replace("-", " ").strip()

    wanted = norm(label)
    for i, n in enumerate(names):
        if norm(n) == wanted:
            return i
    close = difflib.get_close_matches(wanted, [norm(n) for n in names], n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ConvscopeError(f"unknown class name {label!r}{hint}")


def positions(size: tuple[int, int], patch: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    H, W = size
    if isinstance(patch, bool) or not isinstance(patch, int) or patch < 1:
        raise ConvscopeError(f"patch must be a positive number of pixels, got {patch!r}")
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ConvscopeError(f"stride must be a positive number of pixels, got {stride!r}")
    if patch > min(H, W):
        raise ConvscopeError(
            f"patch {patch} is larger than the {H}x{W} image; use a patch of at most {min(H, W)}"
        )
    return np.arange(0, H - patch + 1, stride), np.arange(0, W - patch + 1, stride)


def default_layer(model: nn.Module, x: Tensor | None = None) -> str:
    """conv5 (ZFNet, AlexNet), head (EfficientNet-Lite0), else the last spatial layer seen
    when the model runs on `x` (default: a blank image of its crop size)."""
    aliases = info_of(model).aliases
    for name in DEFAULT_LAYERS:
        if name in aliases:
            return name
    # A user's model: the last module whose output is still a spatial map.
    from convscope.core.tape import record_all

    if x is None:
        size = info_of(model).preprocess.crop
        x = torch.zeros(3, size, size)
    try:
        _, calls, _ = record_all(model, x.unsqueeze(0))
    except (RuntimeError, ValueError) as e:
        raise ConvscopeError(
            f"cannot run the model to find its last convolutional layer ({e.__class__.__name__});"
            " pass --layer"
        ) from e
    spatial = [
        c
        for c in calls
        if c.module and c.shape is not None and len(c.shape) == 4 and c.shape[-1] > 1
    ]
    if not spatial:
        raise ConvscopeError("the model has no layer with a spatial output; pass --layer")
    last = spatial[-1]
    return last.module if last.call == 0 else f"{last.module}#{last.call}"


# -- the sweep ------------------------------------------------------------------------------


@dataclass
class _Setup:
    model: nn.Module
    x: Tensor  # 3 x H x W
    layer: LayerRef
    fill: Tensor  # C
    patch: int
    batch: int


def occlusion(
    model: nn.Module,
    image: Any,
    *,
    patch: int = 32,
    stride: int = 8,
    fill: str | Sequence[float] = "mean",
    layer: str | None = None,
    label: int | str | Sequence[int | str] | None = None,
    channel: int | None = None,
    method: str = "exact",
    batch: int = 32,
    tau: float = 1.0,
    coarse: int = 2,
    drill: float = 0.2,
) -> OcclusionResult:
    """Slide a square over `image` and map, per position, the paper's three quantities.

    image: the model's preprocessed 3 x H x W input, or a PIL image / RGB array (preprocessed
    here). layer: whose strongest feature map to follow (default: conv5, or EfficientNet's
    head, or the last spatial layer). label: class index or name, or several (a
    list, or names separated by commas) whose probabilities are summed (default: the clean
    prediction). method: "exact", "approximate" (`tau`, `coarse`, `drill`) or "brute".
    """
    if method not in METHODS:
        raise ConvscopeError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if batch < 1:
        raise ConvscopeError(f"batch must be at least 1, got {batch}")
    if not 0.0 < tau <= 1.0:
        raise ConvscopeError(f"tau must be in (0, 1], got {tau}")
    if coarse < 1 or not 0.0 <= drill <= 1.0:
        raise ConvscopeError(f"coarse must be >= 1 and drill in [0, 1]; got {coarse}, {drill}")
    was_training = model.training
    model.eval()  # dropout off, BatchNorm on its running statistics
    try:
        return _occlusion(model, image, patch, stride, fill, layer, label, channel, method, batch,
                          tau, coarse, drill)  # fmt: skip
    finally:
        model.train(was_training)


def _occlusion(
    model: nn.Module,
    image: Any,
    patch: int,
    stride: int,
    fill: str | Sequence[float],
    layer: str | None,
    label: int | str | Sequence[int | str] | None,
    channel: int | None,
    method: str,
    batch: int,
    tau: float,
    coarse: int,
    drill: float,
) -> OcclusionResult:
    start_time = time.perf_counter()
    info = info_of(model)
    x = as_input(model, image)
    # Run where the model's weights are (CPU unless the caller moved the model).
    device = next((t.device for t in model.parameters()), x.device)
    x = x.to(device)
    H, W = int(x.shape[-2]), int(x.shape[-1])
    ys, xs = positions((H, W), patch, stride)
    fill_t, fill_name = fill_values(fill, info, int(x.shape[0]))
    fill_t = fill_t.to(device)
    layer_name = layer or default_layer(model, x)
    lref = resolve_layer(model, layer_name)
    try:
        clean_act, logits = _clean(model, x, lref)
    except ConvscopeError:
        raise
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise ConvscopeError(
            f"{info.name} cannot take a {H}x{W} image ({first}); resize it to "
            f"{info.preprocess.crop}x{info.preprocess.crop}"
        ) from e
    if clean_act is None:
        raise ConvscopeError(f"layer {layer_name!r} does not output a tensor convscope can follow")
    engine = None
    refs: tuple[Any, Any] = (None, None)
    fell_back: list[str] = []
    if method != "brute":
        engine, refs, why = _engine(model, x, lref, tau if method == "approximate" else 1.0)
        if engine is None:
            # A wrong map would be worse than a slow one.
            log.warning("occlusion: %s; running brute force instead of %s", why, method)
            fell_back = [f"whole model ({why})"]
            method = "brute" if method == "exact" else method
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        raise ConvscopeError("the model must return one row of class scores per image")
    classes = int(logits.shape[1])
    names = info.class_names
    if isinstance(label, str) and "," in label:
        label = [v for v in label.split(",") if v.strip()]
    wanted = label if isinstance(label, (list, tuple)) else [label]
    labels = [i for i in (resolve_label(v, names, classes) for v in wanted) if i is not None]
    probs = logits.softmax(1)[0]
    clean_top = int(probs.argmax())
    labels = list(dict.fromkeys(labels)) or [clean_top]
    label_i = labels[0]
    if channel is None:
        flat = clean_act.flatten(2).amax(2) if clean_act.dim() == 4 else clean_act
        channel = int(flat[0].argmax())
    elif not 0 <= channel < int(clean_act.shape[1]):
        raise ConvscopeError(
            f"channel {channel} is out of range: {layer_name} has {clean_act.shape[1]} maps"
        )
    setup = _Setup(model, x, lref, fill_t, patch, batch)
    ny, nx = len(ys), len(xs)
    act = np.zeros((ny, nx))
    prob = np.zeros((ny, nx))
    top = np.zeros((ny, nx), dtype=np.int64)
    topp = np.zeros((ny, nx))
    computed = np.zeros((ny, nx), dtype=bool)

    def run(indices: list[tuple[int, int]]) -> None:
        pos = [(int(ys[i]), int(xs[j])) for i, j in indices]
        if engine is None:
            rows = _brute(setup, pos, channel, labels)
        else:
            rows = _incremental(engine, setup, pos, refs[0], refs[1], channel, labels)
        for (i, j), (a, p, t, tp) in zip(indices, rows):
            act[i, j], prob[i, j], top[i, j], topp[i, j] = a, p, t, tp
            computed[i, j] = True

    all_idx = [(i, j) for i in range(ny) for j in range(nx)]
    if method == "approximate" and coarse > 1:
        _drill_down(run, (ny, nx), coarse, drill, act, prob, top, topp, computed)
    else:
        run(all_idx)
    clean_activation = float(clean_act[0, channel].sum())
    shown = {int(c) for c in np.unique(top)} | {*labels, clean_top}
    class_names = {c: (names[c] if names and c < len(names) else f"class {c}") for c in shown}
    return OcclusionResult(
        activation=act,
        probability=prob,
        top_class=top,
        top_probability=topp,
        computed=computed,
        ys=np.asarray(ys),
        xs=np.asarray(xs),
        patch=patch,
        stride=stride,
        fill=[float(v) for v in fill_t],
        fill_name=fill_name,
        layer=layer_name,
        channel=channel,
        label=label_i,
        class_names=class_names,
        clean_activation=clean_activation,
        clean_probability=float(probs[labels].sum()),
        clean_top=clean_top,
        image_size=(H, W),
        method=method,
        model=info.name,
        seconds=round(time.perf_counter() - start_time, 3),
        fallbacks=sorted(engine.counter.fallbacks) if engine is not None else fell_back,
        tau=tau if method == "approximate" else 1.0,
        labels=labels,
    )


def _clean(model: nn.Module, x: Tensor, lref: LayerRef) -> tuple[Tensor | None, Any]:
    """The layer's output and the model's output for the unoccluded image (a plain forward)."""
    module = dict(model.named_modules())[lref.module]
    seen: list[Any] = []
    handle = module.register_forward_hook(lambda m, a, out: seen.append(out))
    try:
        with torch.no_grad():
            logits = model(x.unsqueeze(0))
    finally:
        handle.remove()
    if len(seen) <= lref.call:
        raise ConvscopeError(f"layer {lref} was not reached in the forward pass")
    out = seen[lref.call]
    out = out[0] if isinstance(out, (tuple, list)) else out
    return (out.clone() if isinstance(out, Tensor) else None), logits


def _engine(
    model: nn.Module, x: Tensor, lref: LayerRef, tau: float
) -> tuple[Incremental | None, tuple[Any, Any], str]:
    """Incremental inference for this model, or None and why it cannot be used."""
    try:
        engine = Incremental(model, x, tau=tau)
    except ConvscopeError as e:
        return None, (None, None), str(e)
    act_ref, out_ref = engine.ref_of_call(lref.module, lref.call), engine.output_ref
    if act_ref is None or out_ref is None:
        return None, (None, None), f"the output of {lref} is not on the recorded tape"
    replayed = engine.clean[out_ref]
    if not isinstance(replayed, Tensor) or not torch.allclose(
        replayed, engine.output, rtol=1e-4, atol=1e-5
    ):
        # Data-dependent control flow or randomness: replaying the tape is not the model.
        return None, (None, None), "replaying the recorded operations does not reproduce the model"
    return engine, (act_ref, out_ref), ""


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


Row = tuple[float, float, int, float]


def _summarise(total: Tensor, logits: Tensor, labels: list[int]) -> list[Row]:
    p = logits.float().softmax(1)
    tp, t = p.max(1)
    pl = p[:, labels].sum(1)
    return [
        (float(a), float(q0), int(c), float(q))
        for a, q0, c, q in zip(total.tolist(), pl.tolist(), t.tolist(), tp.tolist())
    ]


def _incremental(
    engine: Incremental,
    setup: _Setup,
    pos: list[tuple[int, int]],
    act_ref: Any,
    out_ref: Any,
    channel: int,
    labels: list[int],
) -> list[Row]:
    rows: list[Row] = []
    C = int(setup.x.shape[0])
    H, W = int(setup.x.shape[-2]), int(setup.x.shape[-1])
    clean = engine.clean[act_ref]
    clean_total = clean[:, channel].sum() if clean.dim() == 4 else None
    for part in _chunks(pos, setup.batch):
        B = len(part)
        data = setup.fill.view(1, C, 1, 1).expand(B, C, setup.patch, setup.patch).contiguous()
        off = torch.tensor(part, dtype=torch.long, device=data.device)
        first = Patch(data, off, (H, W))
        got = engine.run(first, [act_ref, out_ref])
        a, logits = got[act_ref], got[out_ref]
        if isinstance(a, Patch) and a.covers:
            total = a.data[:, channel].flatten(1).sum(1)
        elif isinstance(a, Patch):
            # The map's total is the clean total plus what changed inside each row's box.
            new = a.data[:, channel]
            old = engine.clean_box(act_ref, channel, a.off, a.size)
            total = clean_total + (new - old).flatten(1).sum(1)
        else:
            total = a[:, channel].reshape(B, -1).sum(1)
        rows += _summarise(total, logits, labels)
    return rows


def _brute(setup: _Setup, pos: list[tuple[int, int]], channel: int, labels: list[int]) -> list[Row]:
    """Full forward passes of occluded copies, a batch at a time."""
    model, x, P = setup.model, setup.x, setup.patch
    module = dict(model.named_modules())[setup.layer.module]
    seen: list[Tensor] = []
    calls = [0]

    def hook(mod: nn.Module, inputs: Any, output: Any) -> None:
        if calls[0] == setup.layer.call:
            t = output[0] if isinstance(output, (tuple, list)) else output
            seen.append(t[:, channel].reshape(t.shape[0], -1).sum(1))
        calls[0] += 1

    handle = module.register_forward_hook(hook)
    rows: list[Row] = []
    fill = setup.fill.view(-1, 1, 1)
    try:
        with torch.no_grad():
            for part in _chunks(pos, setup.batch):
                xb = x.unsqueeze(0).repeat(len(part), 1, 1, 1)
                for b, (y, xx) in enumerate(part):
                    xb[b, :, y : y + P, xx : xx + P] = fill
                seen.clear()
                calls[0] = 0
                logits = model(xb)
                rows += _summarise(seen[0], logits, labels)
    finally:
        handle.remove()
    return rows


def _drill_down(
    run: Any,
    shape: tuple[int, int],
    coarse: int,
    drill: float,
    act: np.ndarray,
    prob: np.ndarray,
    top: np.ndarray,
    topp: np.ndarray,
    computed: np.ndarray,
) -> None:
    """Coarse grid first; the fine grid only near the coarse positions that matter most."""
    ny, nx = shape
    ci = sorted(set(range(0, ny, coarse)) | {ny - 1})
    cj = sorted(set(range(0, nx, coarse)) | {nx - 1})
    run([(i, j) for i in ci for j in cj])
    # Interpolate the coarse maps onto the fine grid (labels: the nearest coarse position).
    for m in (act, prob, topp):
        cm = m[np.ix_(ci, cj)]
        rows = np.stack([np.interp(np.arange(nx), cj, r) for r in cm])
        m[:] = np.stack([np.interp(np.arange(ny), ci, c) for c in rows.T]).T
    near_i = np.asarray(ci)[np.abs(np.arange(ny)[:, None] - np.asarray(ci)[None]).argmin(1)]
    near_j = np.asarray(cj)[np.abs(np.arange(nx)[:, None] - np.asarray(cj)[None]).argmin(1)]
    top[:] = top[np.ix_(near_i, near_j)]
    # Drill where interpolation is least to be trusted: where a coarse value differs most from
    # its neighbours (maps normalised to their range), or the top class changes next door.
    score = np.zeros((len(ci), len(cj)))
    for m in (act, prob):
        cm = m[np.ix_(ci, cj)]
        spread = float(cm.max() - cm.min()) or 1.0
        score = np.maximum(score, _neighbour_jump(cm) / spread)
    ct = top[np.ix_(ci, cj)]
    score = np.maximum(score, _neighbour_jump((ct[:, :, None] == np.unique(ct)).astype(float)))
    k = round(drill * score.size)
    if k == 0:
        return
    chosen = np.argsort(-score, axis=None)[:k]
    todo: set[tuple[int, int]] = set()
    for flat in chosen:
        a, b = divmod(int(flat), len(cj))
        i0, j0 = ci[a], cj[b]
        # The coarse position's cell: the fine positions nearer to it than to its neighbours.
        for i in range(max(0, i0 - coarse // 2), min(ny, i0 + (coarse + 1) // 2)):
            for j in range(max(0, j0 - coarse // 2), min(nx, j0 + (coarse + 1) // 2)):
                if not computed[i, j]:
                    todo.add((i, j))
    if todo:
        run(sorted(todo))


def _neighbour_jump(m: np.ndarray) -> np.ndarray:
    """Largest absolute difference between each cell and its 4 neighbours (any trailing axes
    are maxed over)."""
    out = np.zeros(m.shape[:2])
    diff_y = np.abs(np.diff(m, axis=0))
    diff_x = np.abs(np.diff(m, axis=1))
    if m.ndim == 3:
        diff_y, diff_x = diff_y.max(-1), diff_x.max(-1)
    out[1:] = np.maximum(out[1:], diff_y)
    out[:-1] = np.maximum(out[:-1], diff_y)
    out[:, 1:] = np.maximum(out[:, 1:], diff_x)
    out[:, :-1] = np.maximum(out[:, :-1], diff_x)
    return out
