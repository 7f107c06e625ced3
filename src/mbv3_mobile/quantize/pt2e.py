"""int8 quantization for ExecuTorch/XNNPACK: PT2E post-training quantization (PTQ) and
quantization-aware training (QAT), both calibrated/trained on real images only.

Both paths use executorch's `XNNPACKQuantizer` (per-channel symmetric int8 weights, per-tensor
affine int8 activations) with this project's recipe (`_recipe`: the stem edge stays fp32;
`float_stem=False` turns it off) and return a converted PT2E `GraphModule` (q/dq reference graph,
float input and output) that `graph.export_program` + `export.executorch.lower` turn into a .pte.

    calib = calibration_images(ckpt.preprocessing, 512)             # real training images
    ptq = quantize_ptq(ckpt.model, calib)
    qat = quantize_qat(ckpt.model, load_fashion_mnist("train"), ckpt.preprocessing, calib)
    logits, labels = predict_logits(ptq, load_fashion_mnist("test"), ckpt.preprocessing)

QAT re-parameterises every BatchNorm to torchao's hard-coded eps before export and keeps BN frozen,
because torchao's fused QAT pattern normalises with eps 1e-5 while MobileNetV3 uses 1e-3 (the cause
of pytorch/pytorch#114859); the study and its figures: docs/qat-bn-eps.md.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from mbv3_mobile.core.errors import UserError
from mbv3_mobile.data.datasets import ArrayDataset, BatchTransform, load_fashion_mnist
from mbv3_mobile.data.preprocess import Preprocessing
from mbv3_mobile.data.selection import limited
from mbv3_mobile.quantize._qat_patterns import only_present_conv_patterns

# torchao's PT2E QAT conv+BN patterns hard-code this eps (see the module docstring).
TORCHAO_QAT_BN_EPS = 1e-5
_MAX_DYNAMIC_BATCH = 4096


class QuantizationError(UserError):
    """Quantization could not run as asked (bad data, wrong model state, ...)."""




# ---------------------------------------------------------------- real data


def real_images(
    preprocessing: Preprocessing,
    num_images: int,
    *,
    split: str = "train",
    seed: int = 0,
    dataset: ArrayDataset | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`num_images` real images, class-balanced and seeded, as normalised model input.

    Returns (x, labels): x is float (N, 3, R, R) exactly as the model sees it (`BatchTransform`
    with the checkpoint's `Preprocessing`, no augmentation). `dataset` defaults to Fashion-MNIST
    `split` ('train' for calibration, 'test' for parity checks and bundled test cases).
    """
    if num_images < 1:
        raise QuantizationError(f"num_images must be >= 1, got {num_images}")
    data = dataset if dataset is not None else load_fashion_mnist(split)
    if num_images > len(data):
        raise QuantizationError(f"asked for {num_images} images but the dataset holds {len(data)}")
    pool = limited(data, num_images, seed)  # the pipelines' own pick: the same pictures for the same seed
    return BatchTransform(preprocessing)(pool.images), pool.labels.clone()


def calibration_images(
    preprocessing: Preprocessing, num_images: int = 512, *, seed: int = 0, dataset: ArrayDataset | None = None
) -> torch.Tensor:
    """Real training images for PTQ calibration / QAT observer initialisation (never random tensors)."""
    return real_images(preprocessing, num_images, split="train", seed=seed, dataset=dataset)[0]


# ---------------------------------------------------------------- PT2E plumbing


def xnnpack_quantizer(*, qat: bool = False, float_stem: bool = True):
    """executorch's XNNPACKQuantizer (int8 per-channel symmetric weights, per-tensor affine
    activations) with this project's recipe: the stem edge stays float (`_recipe`; `float_stem=False`:
    every conv and linear int8, XNNPACKQuantizer as it is)."""
    from mbv3_mobile.quantize._recipe import MobileNetV3Quantizer

    return MobileNetV3Quantizer(qat=qat, float_stem=float_stem)


def float_layers(graph: torch.fx.GraphModule) -> list[str]:
    """Module paths of the convolutions / linears a converted int8 graph runs in float (weights not
    dequantized from int8): the recipe's stem edge plus any mixed-precision fallback."""
    from mbv3_mobile.graph import is_conv_or_linear, is_dequantize, module_path

    out = []
    for node in graph.graph.nodes:
        weight = node.args[1] if is_conv_or_linear(node) and len(node.args) > 1 else None
        if isinstance(weight, torch.fx.Node) and not is_dequantize(weight):
            path = module_path(node)
            if path and path not in out:
                out.append(path)
    return out


def _export_for_quantization(model: nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    """torch.export with a dynamic batch dimension (calibration, QAT and evaluation batch freely)."""
    from mbv3_mobile.graph import export_program

    example = example[:2] if len(example) >= 2 else torch.cat([example, example])
    return export_program(model, example, dynamic_batch=_MAX_DYNAMIC_BATCH).module()


def _check_calibration(calibration: torch.Tensor, what: str) -> None:
    if not isinstance(calibration, torch.Tensor) or calibration.dim() != 4 or calibration.shape[1] != 3:
        raise QuantizationError(f"{what}: calibration must be a float (N, 3, R, R) batch of real images")
    if not calibration.is_floating_point() or len(calibration) < 2:
        raise QuantizationError(f"{what}: need >= 2 normalised float calibration images, got {tuple(calibration.shape)}")


def _batches(x: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    return [x[i : i + batch_size] for i in range(0, len(x), batch_size)]


def _bar(iterable: Iterable, *, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


# ---------------------------------------------------------------- PTQ


@torch.no_grad()
def quantize_ptq(
    model: nn.Module, calibration: torch.Tensor, *, batch_size: int = 64, float_stem: bool = True, progress: bool = True
) -> torch.fx.GraphModule:
    """Post-training int8 quantization (PT2E + XNNPACKQuantizer), calibrated on `calibration`.

    `calibration` is a batch of real, normalised images (see `calibration_images`). The input
    model is not modified. Returns the converted q/dq GraphModule (float in, float out); do not
    call .train()/.eval() on it (PT2E forbids it).
    """
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    return convert_pt2e(calibrate_ptq(model, calibration, batch_size=batch_size, float_stem=float_stem, progress=progress))


@torch.no_grad()
def calibrate_ptq(
    model: nn.Module, calibration: torch.Tensor, *, batch_size: int = 64, float_stem: bool = True, progress: bool = True
) -> torch.fx.GraphModule:
    """The prepared PT2E graph with its observers calibrated on `calibration`, not yet converted:
    one calibration serves every mixed-precision candidate (`quantize.mixed.convert_with_fp32`)."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    _check_calibration(calibration, "PTQ")
    float_model = copy.deepcopy(model).eval()
    graph = _export_for_quantization(float_model, calibration[:2])
    prepared = prepare_pt2e(graph, xnnpack_quantizer(float_stem=float_stem))
    chunks = _batches(calibration, batch_size)
    for x in _bar(chunks, total=len(chunks), desc="PTQ calibration", enabled=progress):
        prepared(x)
    return prepared


# ---------------------------------------------------------------- QAT


@dataclass(frozen=True)
class QATConfig:
    """A short QAT fine-tune on real training images.

    Defaults: 300 steps of 64 images, AdamW at 5e-5 with cosine decay, label smoothing 0.1 (the
    training recipe's), no augmentation, BN statistics frozen throughout (module docstring).
    Observers start from PTQ calibration on real images; weight observers follow the weights for
    the first `freeze_observers_at` of the steps, then all qparams are fixed so the weights settle
    on them. Activation ranges keep their PTQ (histogram) values unless `observe_activations`.

    Augmentation is off by default: a short fine-tune must not move the model to another input
    distribution. Measured on the CI model (trained without augmentation), 80 steps with the
    training flip/shift augmentation cost ~1 pt on the test set; the same steps without it cost
    nothing. With frozen BN statistics, shifted/flipped inputs also no longer match BN's stats.
    """

    steps: int = 300
    batch_size: int = 64
    lr: float = 5e-5
    weight_decay: float = 0.0
    label_smoothing: float = 0.1
    augment: bool = False
    freeze_observers_at: float = 0.6  # fraction of steps after which weight (and activation) qparams are fixed
    observe_activations: bool = False  # True: activation ranges follow a moving average until the freeze
    calibration_batch_size: int = 64
    float_stem: bool = True  # the recipe's float stem edge (quantize._recipe), as in PTQ
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise QuantizationError(f"QAT needs steps >= 1 and batch_size >= 1, got {self.steps}, {self.batch_size}")
        if not 0.0 <= self.freeze_observers_at <= 1.0:
            raise QuantizationError(f"freeze_observers_at must be in [0, 1], got {self.freeze_observers_at}")

    def to_dict(self) -> dict:
        return asdict(self)


def reparameterize_bn_eps(model: nn.Module, eps: float = TORCHAO_QAT_BN_EPS) -> nn.Module:
    """A copy whose BatchNorms use `eps`, with running_var shifted so eval-mode outputs are unchanged.

    Eval-mode BN computes (x - mean) / sqrt(var + eps): keeping var + eps fixed keeps the function.
    This is the fix for torchao's hard-coded QAT BN eps (module docstring).
    """
    out = copy.deepcopy(model)
    for m in out.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.running_var is not None:
            with torch.no_grad():
                m.running_var.add_(m.eps - eps)
            m.eps = eps
    return out


def _fake_quant_modules(graph: torch.fx.GraphModule) -> list[nn.Module]:
    from torchao.quantization.pt2e import FakeQuantizeBase

    return [m for m in graph.modules() if isinstance(m, FakeQuantizeBase)]


def _is_weight_fq(fq: nn.Module) -> bool:
    return fq.qscheme in (torch.per_channel_symmetric, torch.per_channel_affine)


@torch.no_grad()
def _calibrate_observers(prepared: torch.fx.GraphModule, calibration: torch.Tensor, batch_size: int, progress: bool) -> None:
    """PTQ-style start for QAT, on real images: every activation fake-quant gets the range a PTQ
    HistogramObserver (the XNNPACK PTQ config's observer) picks on `calibration`, and every weight
    fake-quant the per-channel min/max of its weights. Fake-quant stays off while observing."""
    from torchao.quantization.pt2e import HistogramObserver, disable_fake_quant, disable_observer, enable_fake_quant

    fqs = _fake_quant_modules(prepared)
    acts = [fq for fq in fqs if not _is_weight_fq(fq)]
    prepared.apply(disable_fake_quant)
    prepared.apply(disable_observer)
    for fq in fqs:
        if _is_weight_fq(fq):
            fq.enable_observer()  # weights are constants here: one forward gives their exact min/max
    prepared(calibration[:2])
    for fq in fqs:
        fq.disable_observer()
    hists, hooks = {}, []
    for fq in acts:
        obs = fq.activation_post_process
        hists[fq] = HistogramObserver(dtype=obs.dtype, qscheme=obs.qscheme, quant_min=obs.quant_min,
                                      quant_max=obs.quant_max, eps=float(obs.eps))
        hooks.append(fq.register_forward_pre_hook(lambda mod, args: hists[mod](args[0].detach())))
    try:
        chunks = _batches(calibration, batch_size)
        for x in _bar(chunks, total=len(chunks), desc="QAT observer calibration", enabled=progress):
            prepared(x)
    finally:
        for h in hooks:
            h.remove()
    for fq, hist in hists.items():
        scale, zero_point = hist.calculate_qparams()
        fq.scale.resize_(scale.shape).copy_(scale)
        fq.zero_point.resize_(zero_point.shape).copy_(zero_point)
        # the moving-average observer (used if observers are re-enabled, and by convert_pt2e to
        # compute the final qparams) starts from exactly this range
        obs = fq.activation_post_process
        obs.min_val.resize_(scale.shape).copy_((obs.quant_min - zero_point) * scale)
        obs.max_val.resize_(scale.shape).copy_((obs.quant_max - zero_point) * scale)
    prepared.apply(enable_fake_quant)


def prepare_qat(model: nn.Module, calibration: torch.Tensor, *, batch_size: int = 64, float_stem: bool = True,
                progress: bool = False) -> torch.fx.GraphModule:
    """QAT-ready graph: BN eps re-parameterised, PT2E QAT prepared, BN/dropout in eval mode,
    observers initialised on `calibration` (real images), fake-quant on. Exposed for tests/debugging;
    `quantize_qat` is the one-call path."""
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    from mbv3_mobile.quantize._recipe import fold_stem_batchnorm

    _check_calibration(calibration, "QAT")
    qat_model = reparameterize_bn_eps(model)
    if float_stem:
        qat_model = fold_stem_batchnorm(qat_model, _export_for_quantization(qat_model, calibration[:2]))
    graph = _export_for_quantization(qat_model.train(), calibration[:2])
    with only_present_conv_patterns():
        prepared = prepare_qat_pt2e(graph, xnnpack_quantizer(qat=True, float_stem=float_stem))
    # Frozen BN statistics (and no dropout) for the whole fine-tune: the fused QAT conv+BN then
    # equals the folded conv that convert_pt2e emits (module docstring).
    move_exported_model_to_eval(prepared)
    _calibrate_observers(prepared, calibration, batch_size, progress)
    return prepared


def quantize_qat(
    model: nn.Module,
    train_data: ArrayDataset,
    preprocessing: Preprocessing,
    calibration: torch.Tensor,
    config: QATConfig = QATConfig(),
    *,
    progress: bool = True,
) -> torch.fx.GraphModule:
    """PT2E quantization-aware fine-tune on real training images, then convert.

    `train_data`: uint8 images + labels (e.g. `load_fashion_mnist("train")`, or the training
    split the checkpoint was trained on); batches go through `BatchTransform(preprocessing)`
    (with the training recipe's light augmentation only if `config.augment`). `calibration`:
    real normalised images that initialise the observers PTQ-style. The input model is not modified.
    Returns the converted q/dq GraphModule, like `quantize_ptq`.
    """
    from torch.utils.data import DataLoader, RandomSampler
    from torchao.quantization.pt2e import disable_observer
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    if len(train_data) == 0:
        raise QuantizationError("QAT needs real training images; the dataset is empty")
    torch.manual_seed(config.seed)
    prepared = prepare_qat(model, calibration, batch_size=config.calibration_batch_size, float_stem=config.float_stem,
                           progress=progress)
    params = [p for p in prepared.parameters() if p.requires_grad]
    if not params:
        raise QuantizationError("the QAT graph has no trainable parameters")
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(1.0, step / config.steps)))
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    transform = BatchTransform(preprocessing, augment=config.augment)
    gen = torch.Generator().manual_seed(config.seed)
    sampler = RandomSampler(train_data, replacement=True, num_samples=config.steps * config.batch_size, generator=gen)
    loader = DataLoader(train_data, batch_size=config.batch_size, sampler=sampler)
    freeze_step = int(round(config.freeze_observers_at * config.steps))
    for fq in _fake_quant_modules(prepared):
        if freeze_step > 0 and (_is_weight_fq(fq) or config.observe_activations):
            fq.enable_observer()
    bar = _bar(loader, total=config.steps, desc="QAT", enabled=progress)
    for step, (images, labels) in enumerate(bar):
        if step == freeze_step:
            prepared.apply(disable_observer)
        loss = criterion(prepared(transform(images, gen)), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if hasattr(bar, "set_postfix") and step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    prepared.apply(disable_observer)
    for p in params:
        p.requires_grad_(False)
    with only_present_conv_patterns():
        return convert_pt2e(prepared)


# ---------------------------------------------------------------- evaluation and gates


@torch.no_grad()
def predict_logits(
    model,
    dataset: ArrayDataset,
    preprocessing: Preprocessing,
    *,
    batch_size: int = 500,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels for a whole uint8 dataset, in dataset order.

    Works for eager models (put them in eval mode first) and PT2E GraphModules (which must not be
    switched with .eval()); `model` may be any callable batch -> logits.
    """
    transform = BatchTransform(preprocessing)
    outs = []
    starts = range(0, len(dataset), batch_size)
    for s in _bar(starts, total=len(starts), desc="evaluate", enabled=progress):
        outs.append(model(transform(dataset.images[s : s + batch_size])).float())
    return torch.cat(outs), dataset.labels.clone()


def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(1) == labels).float().mean().item()
