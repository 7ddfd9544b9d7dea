"""The nine experiments: one table each (the claim, the arms, the budget). Nothing here trains: see
``framework.py``. Budgets are for a full run of at most ~30 minutes on 2 CPU cores (``--quick``: a few steps
per arm, minutes in all); the report states every change of scale in its setup.

Paper numbers quoted in an arm (``paper=``) are the ones the project's ``docs/architectures.md`` records;
where we are not sure of a paper's table, the claim is stated without numbers.
"""

from __future__ import annotations

from typing import Any

import torch

from .framework import Arm, Claim, Experiment, RunOptions

# a few optimizer steps per arm: the --quick run of every experiment (tests, time estimates)
QUICK = {"train_samples": 256, "val_samples": 256, "batch_size": 64, "epochs": 1, "warmup_epochs": 0.0}
ADAMW = {"opt": "adamw", "lr": 2e-3, "weight_decay": 0.05, "smoothing": 0.1}


# -- 1. RepVGG: which branches to train with -----------------------------------------------------------------
_REPVGG_SMALL = {"num_blocks": (1, 2, 2, 1), "width_multiplier": (0.5, 0.5, 0.5, 0.25)}  # the demo's network


def _repvgg(name: str, branches: tuple[str, ...], identity_bn: bool = True, paper: float | None = None,
            label: str = "") -> Arm:
    return Arm(name, "repvgg_a0", {**_REPVGG_SMALL, "branches": branches, "identity_bn": identity_bn},
               paper=paper, label=label)


REPVGG_BRANCHES = Experiment(
    name="repvgg-branches",
    title="RepVGG: the training-time branches (3×3, 1×1, identity)",
    paper="RepVGG (Ding et al., CVPR 2021), Table 6 (RepVGG-B0, 120 epochs; numbers as recalled in "
          "docs/architectures.md) and §3.3",
    claim="Training with the extra 1×1 and identity branches improves accuracy over a plain 3×3 network "
          "(72.39 → 73.15 with 1×1, 74.79 with identity, 75.14 with both), and the identity branch needs its "
          "BatchNorm (74.18 without). After re-parameterization every variant is the same plain 3×3 stack, "
          "so the deployed models are equally fast.",
    setup="The `moderncnn demo` network (RepVGG-A0 with blocks 1-2-2-1 and widths ×0.5/×0.25: stages 32, 32, "
          "64, 128, 128 channels) on Fashion-MNIST at 32 px, the fashion-mnist recipe (SGD, cosine, "
          "pad-and-crop) for 2 epochs instead of 10. The deployed (fused) forms are timed at batch 1.",
    arms=(
        _repvgg("3x3", ("3x3",), paper=72.39, label="3×3 only"),
        _repvgg("3x3+1x1", ("3x3", "1x1"), paper=73.15, label="+1×1"),
        _repvgg("3x3+id", ("3x3", "identity"), paper=74.79, label="+identity (BN)"),
        _repvgg("all", ("3x3", "1x1", "identity"), paper=75.14, label="3×3 + 1×1 + identity (RepVGG)"),
        _repvgg("all-id-noBN", ("3x3", "1x1", "identity"), identity_bn=False, paper=74.18,
                label="identity without BN"),
    ),
    claims=(
        Claim("all three branches beat 3×3 only", "top1", "all", ">", "3x3"),
        Claim("+1×1 beats 3×3 only", "top1", "3x3+1x1", ">", "3x3"),
        Claim("+identity beats 3×3 only", "top1", "3x3+id", ">", "3x3"),
        Claim("the identity branch needs its BN", "top1", "all", ">", "all-id-noBN"),
        Claim("deployed: the same parameters", "deploy_params", "all", "==", "3x3"),
        Claim("deployed: the same speed (within 10%)", "deploy_infer_ms", "all", "==", "3x3", rel_tol=0.1),
    ),
    train={"epochs": 2, "val_samples": 2000},
    quick=QUICK,
    speeds=("train_step", "deploy_infer"),
    paper_metric="ImageNet top-1 (Table 6)",
)


# -- 2./3. MobileNeXt: the sandglass block and the identity ratio --------------------------------------------
def _rows_short(arch: tuple[tuple[int, int, int, int], ...]) -> tuple[tuple[int, int, int, int], ...]:
    """At most two blocks per row of a (t, c, n, s) table: the row's first block (which changes the width or the
    stride, so it has no shortcut) and, where the paper repeats it, one repeat with its shortcut. One block per
    row would leave no shortcut at all, and the shortcut is what the sandglass block, the identity ratio and
    RepLKNet's guideline 2 are about."""
    return tuple((t, c, min(n, 2), s) for t, c, n, s in arch)


def _mobilenext_small() -> dict[str, Any]:
    from ..models.mobilenext import MOBILENEXT_ARCH

    return {"width_mult": 0.5, "arch": _rows_short(MOBILENEXT_ARCH)}


def _mobilenetv2_small(stride2: int = 2) -> dict[str, Any]:
    from ..models.mobilenetv2 import MOBILENETV2_ARCH

    rows = list(_rows_short(MOBILENETV2_ARCH))
    rows[1] = (*rows[1][:3], stride2)
    return {"width_mult": 0.5, "arch": tuple(rows)}


_MOBILE_SETUP = ("Widths ×0.5 and at most two blocks per row of the paper's table (the row's first block and one "
                 "repeat with its shortcut; the blocks' order, strides, expansion and channels as the paper), "
                 "Fashion-MNIST upscaled to 64 px (the last maps are 2×2), the "
                 "fashion-mnist recipe (SGD, cosine) for 2 epochs on 10,000 training images, 2,000 test images.")
_MOBILE_TRAIN = {"img_size": 64, "epochs": 2, "train_samples": 10000, "val_samples": 2000}

MOBILENEXT_BLOCK = Experiment(
    name="mobilenext-block",
    title="MobileNeXt: the sandglass block against the inverted residual",
    paper="MobileNeXt (Zhou et al., ECCV 2020, \"Rethinking Bottleneck Structure for Efficient Mobile Network "
          "Design\"), §3 and its ablation study",
    claim="The sandglass block (shortcut between the wide tensors, depthwise convs at both wide ends, linear "
          "last depthwise conv) beats MobileNetV2's inverted residual at the same budget (74.02 vs 72.3 top-1 "
          "at width 1.0); depthwise convs at the ends beat depthwise convs in the narrow middle; the second "
          "depthwise conv helps; an activation after the last depthwise conv hurts.",
    setup=_MOBILE_SETUP + " 2 seeds.",
    arms=(
        Arm("mobilenetv2", "mobilenetv2_100", _mobilenetv2_small(), paper=72.3, label="inverted residual"),
        Arm("sandglass", "mobilenext_100", _mobilenext_small(), paper=74.02, label="sandglass (MobileNeXt)"),
        Arm("dw-middle", "mobilenext_100", {**_mobilenext_small(), "dw_position": "middle"},
            label="depthwise convs in the narrow middle"),
        Arm("one-dw", "mobilenext_100", {**_mobilenext_small(), "second_dw": False},
            label="without the last depthwise conv"),
        Arm("last-dw-act", "mobilenext_100", {**_mobilenext_small(), "last_dw_act": True},
            label="ReLU6 after the last depthwise conv"),
    ),
    claims=(
        Claim("sandglass beats the inverted residual", "top1", "sandglass", ">", "mobilenetv2"),
        Claim("depthwise at the wide ends beats the narrow middle", "top1", "sandglass", ">", "dw-middle"),
        Claim("the second depthwise conv helps", "top1", "sandglass", ">", "one-dw"),
        Claim("a linear last depthwise conv beats an activated one", "top1", "sandglass", ">", "last-dw-act"),
    ),
    train=_MOBILE_TRAIN,
    quick={**QUICK, "img_size": 32},
    speeds=("train_step", "infer"),
    seeds=2,
    paper_metric="ImageNet top-1 (width 1.0)",
)

MOBILENEXT_IDENTITY = Experiment(
    name="mobilenext-identity",
    title="MobileNeXt: the identity tensor multiplier",
    paper="MobileNeXt (Zhou et al., ECCV 2020), §3.3 (identity tensor multiplier) and its ablation",
    claim="Adding the shortcut to only half of the channels (ratio 1/2) loses no accuracy and lowers latency "
          "(less element-wise work and memory traffic); smaller ratios start to cost accuracy.",
    setup=_MOBILE_SETUP + " Inference latency at batch 8 (the partial shortcut adds into the first k channels "
                          "in place at inference, `models/mobilenext.py`).",
    arms=tuple(Arm(f"ratio-{name}", "mobilenext_100", {**_mobilenext_small(), "identity_ratio": r},
                   label=f"identity ratio {label}")
               for name, label, r in (("1", "1", 1.0), ("1_2", "1/2", 0.5), ("1_3", "1/3", 1 / 3),
                                      ("1_4", "1/4", 0.25))),
    claims=(
        Claim("ratio 1/2 keeps the accuracy of ratio 1 (within 1%)", "top1", "ratio-1_2", "==", "ratio-1",
              rel_tol=0.01),
        Claim("ratio 1/2 is faster than ratio 1", "infer_ms", "ratio-1_2", "<", "ratio-1"),
        Claim("ratio 1/4 costs accuracy", "top1", "ratio-1_4", "<", "ratio-1"),
    ),
    train=_MOBILE_TRAIN,
    quick={**QUICK, "img_size": 32},
    speeds=("infer",),
    infer_batch=8,
)


# -- 4./5. EfficientNetV2: Fused-MBConv placement and progressive learning --------------------------------
_EFFNET_SMALL = {"width_mult": 0.5, "depth_mult": 0.25, "drop_path_rate": 0.0}
_EFFNET_SETUP = ("EfficientNetV2-B0's stage table at width ×0.5 and depth ×0.25 (one or two blocks per stage), "
                 "Fashion-MNIST upscaled to 64 px, the fashion-mnist recipe (SGD, cosine) at lr_base 0.1 on "
                 "20,000 training images for 2 epochs, evaluated on 2,000 test images.")

EFFNETV2_FUSED = Experiment(
    name="effnetv2-fused",
    title="EfficientNetV2: where Fused-MBConv pays",
    paper="EfficientNetV2 (Tan & Le, ICML 2021), §3.2 and its table replacing MBConv with Fused-MBConv by stage",
    claim="Fused-MBConv in the early stages (1-3) speeds training up for a small cost in parameters and FLOPs, "
          "at equal or better accuracy; Fused-MBConv in every stage adds many parameters and FLOPs, slows "
          "training and does not improve accuracy.",
    setup=_EFFNET_SETUP + " Training step time at batch 32, 64 px.",
    arms=(
        Arm("none", "efficientnetv2_b0", {**_EFFNET_SMALL, "fused_stages": 0}, label="MBConv everywhere"),
        Arm("stages1-3", "efficientnetv2_b0", {**_EFFNET_SMALL, "fused_stages": 3},
            label="Fused-MBConv in stages 1-3 (EfficientNetV2)"),
        Arm("all", "efficientnetv2_b0", {**_EFFNET_SMALL, "fused_stages": 6}, label="Fused-MBConv everywhere"),
    ),
    claims=(
        Claim("fused early: faster training step than none", "train_step_ms", "stages1-3", "<", "none"),
        Claim("fused early: few more parameters than none", "params", "stages1-3", ">", "none"),
        Claim("fused everywhere: more parameters than early", "params", "all", ">", "stages1-3"),
        Claim("fused everywhere: slower step than early", "train_step_ms", "all", ">", "stages1-3"),
        Claim("fused early: accuracy not below none", "top1", "stages1-3", ">", "none"),
    ),
    train={"img_size": 64, "epochs": 2, "train_samples": 20000, "val_samples": 2000, "lr_base": 0.1},
    quick={**QUICK, "img_size": 32},
    speeds=("train_step",),
)

_PROG = {"img_size": 64, "epochs": 4, "train_samples": 10000, "val_samples": 2000, "lr_base": 0.1,
         "aa": "rand-m6-n2"}
PROGRESSIVE = Experiment(
    name="progressive",
    title="EfficientNetV2: progressive learning with adaptive regularization",
    paper="EfficientNetV2 (Tan & Le, ICML 2021), §4 (Algorithm 1) and its comparison of progressive learning "
          "with and without adaptive regularization",
    claim="Training with small images first and growing them (progressive resizing) shortens training; "
          "progressive resizing with regularization that grows with the image size (adaptive: RandAugment, "
          "mixup, dropout) is more accurate than progressive resizing with fixed regularization, and at least "
          "as accurate as training at the final size throughout.",
    setup=_EFFNET_SETUP.replace("20,000", "10,000").replace("2 epochs", "4 epochs")
    + " Four progressive stages (one per epoch), image "
          "size 32 → 64 px. Fixed regularization: RandAugment magnitude 6, dropout 0.2, mixup 0.1 throughout; "
          "adaptive: magnitude 2 → 10, dropout 0.1 → 0.3, mixup 0 → 0.2 (the paper's ranges scaled to this "
          "task). The random-size arm draws each stage's size uniformly from 32-64 px (seeded) with every "
          "regularizer at the same place in its range (`--progressive random`, training/progressive.py): "
          "sizes that vary without growing. It is reported beside the others; no claim rests on it.",
    arms=(
        Arm("fixed-size", "efficientnetv2_b0", _EFFNET_SMALL, train={"drop": 0.2, "mixup": 0.1},
            label="64 px throughout, fixed regularization"),
        Arm("progressive", "efficientnetv2_b0", _EFFNET_SMALL,
            train={"progressive": "paper", "prog_size": (32, 64), "prog_ra_magnitude": (6, 6),
                   "prog_dropout": (0.2, 0.2), "prog_mixup": (0.1, 0.1)},
            label="progressive size, fixed regularization"),
        Arm("progressive-adaptive", "efficientnetv2_b0", _EFFNET_SMALL,
            train={"progressive": "paper", "prog_size": (32, 64), "prog_ra_magnitude": (2, 10),
                   "prog_dropout": (0.1, 0.3), "prog_mixup": (0.0, 0.2)},
            label="progressive size, adaptive regularization (EfficientNetV2)"),
        Arm("random-size-adaptive", "efficientnetv2_b0", _EFFNET_SMALL,
            train={"progressive": "random", "prog_size": (32, 64), "prog_ra_magnitude": (2, 10),
                   "prog_dropout": (0.1, 0.3), "prog_mixup": (0.0, 0.2)},
            label="random size per stage, adaptive regularization"),
    ),
    claims=(
        Claim("progressive resizing trains faster", "train_time_s", "progressive-adaptive", "<", "fixed-size"),
        Claim("adaptive regularization beats fixed regularization", "top1", "progressive-adaptive", ">",
              "progressive"),
        Claim("progressive + adaptive is at least as accurate as fixed size", "top1", "progressive-adaptive",
              ">", "fixed-size"),
    ),
    train=_PROG,
    quick={**QUICK, "epochs": 2, "prog_stages": 2, "img_size": 32},
    speeds=(),
    plot_metrics=("top1", "train_time_s"),
)


# -- 6./7. RepLKNet: kernel sizes, and its MobileNetV2 guideline experiments ------------------------------
_REPLK_SMALL = {"channels": (16, 32, 64, 128), "layers": (1, 1, 2, 1), "drop_path_rate": 0.0}


def _replk(kernels: tuple[int, ...], small: bool = True) -> Arm:
    name = "replknet_31b_k" + "_".join(map(str, kernels))
    kw = dict(_REPLK_SMALL)
    if not small:
        kw["small_kernel"] = None
    tag = "-".join(map(str, kernels))
    return Arm(tag + ("" if small else "-nosmall"), name, kw,
               label=f"kernels {tag}" + ("" if small or min(kernels) <= 5 else ", no 5×5 branch"))


REPLKNET_KERNELS = Experiment(
    name="replknet-kernels",
    title="RepLKNet: larger kernels, larger effective receptive fields",
    paper="RepLKNet (Ding et al., CVPR 2022), §4 (the kernel-size table: 3-3-3-3 … 31-29-27-13), §5 (ERF "
          "figure and area-ratio table) and guideline 3 (the parallel small kernel)",
    claim="Accuracy rises as the kernels grow from 3-3-3-3 to 31-29-27-13, the effective receptive field "
          "grows with the kernel (larger high-contribution area ratio), and training the large kernel with a "
          "parallel 5×5 re-parameterized into it helps.",
    setup="RepLKNet-31B's block design at widths 16-32-64-128 and depths 1-1-2-1 (one RepLK block + ConvFFN "
          "pair per layer), no drop path, Fashion-MNIST upscaled to 64 px (stage maps 16, 8, 4, 2 px: kernels "
          "beyond a map's size only see zero padding), AdamW lr 2e-3, weight decay 0.05, 2 epochs on 6,000 "
          "training images, 2,000 test images. ERF ratios of each trained network on 32 test images at 64 px; "
          "times at batch 32.",
    arms=tuple(_replk(k) for k in ((3, 3, 3, 3), (7, 7, 7, 7), (13, 13, 13, 13), (25, 25, 25, 13),
                                   (31, 29, 27, 13))) + (_replk((31, 29, 27, 13), small=False),),
    claims=(
        Claim("31-29-27-13 beats 3-3-3-3", "top1", "31-29-27-13", ">", "3-3-3-3"),
        Claim("larger kernels, larger ERF (20% area)", "erf20", "31-29-27-13", ">", "3-3-3-3"),
        Claim("the parallel small kernel helps", "top1", "31-29-27-13", ">", "31-29-27-13-nosmall"),
    ),
    train={**ADAMW, "img_size": 64, "epochs": 2, "train_samples": 6000, "val_samples": 2000},
    quick={**QUICK, "img_size": 32},
    speeds=("train_step", "infer"),
    infer_batch=32,
    erf_images=32,
    plot_metrics=("top1", "erf20", "train_step_ms"),
)


def _mbv2(name: str, kernels: tuple[int, ...], label: str, **kw: Any) -> Arm:
    return Arm(name, "mobilenetv2_100", {**_mobilenetv2_small(stride2=1), "kernel_sizes": kernels, **kw},
               label=label)


_K3, _K13 = (3,) * 7, (13,) * 7
MBV2_LARGE_KERNEL = Experiment(
    name="mbv2-large-kernel",
    title="RepLKNet's guidelines on MobileNetV2: shortcuts, small-kernel re-parameterization, large kernels "
          "on small maps",
    paper="RepLKNet (Ding et al., CVPR 2022), §3 guidelines 2, 3 and 5 (the MobileNetV2 tables)",
    claim="Guideline 2: identity shortcuts are vital for very large kernels (without them, 13×13 kernels "
          "lose much accuracy). Guideline 3: re-parameterizing a large kernel with a parallel small one "
          "improves it. Guideline 5: large kernels help even on small (7×7) feature maps: enlarging the last "
          "stage's depthwise 3×3 to 13×13 improves accuracy.",
    setup="MobileNetV2 at width ×0.5 with at most two blocks per row of its table (the row's first block and one "
          "repeat with its shortcut) and the second row's stride "
          "removed, Fashion-MNIST upscaled to 64 px, so the last stage runs on 4×4 maps (the paper's 7×7 at "
          "224 px), the fashion-mnist recipe (SGD, cosine) for 2 epochs on 5,000 training images, 2,000 test "
          "images, 2 seeds.",
    arms=(
        _mbv2("3x3", _K3, "depthwise 3×3 (MobileNetV2)"),
        _mbv2("13x13", _K13, "every depthwise 13×13"),
        _mbv2("3x3-noshortcut", _K3, "3×3, no shortcut", shortcut=False),
        _mbv2("13x13-noshortcut", _K13, "13×13, no shortcut", shortcut=False),
        _mbv2("13x13+3x3-reparam", _K13, "13×13 with a parallel 3×3, merged", small_kernel=3),
        _mbv2("last-stage-13x13", (3, 3, 3, 3, 3, 13, 13), "13×13 in the last stage (4×4 maps) only"),
    ),
    claims=(
        Claim("13×13 needs the shortcut", "top1", "13x13", ">", "13x13-noshortcut"),
        Claim("a parallel small kernel improves 13×13", "top1", "13x13+3x3-reparam", ">", "13x13"),
        Claim("13×13 on the small last-stage maps beats 3×3", "top1", "last-stage-13x13", ">", "3x3"),
    ),
    train={**_MOBILE_TRAIN, "train_samples": 5000},
    quick={**QUICK, "img_size": 32},
    seeds=2,
    speeds=("train_step",),
)


# -- 8. Large depthwise kernels cost little time ---------------------------------------------------------
_LK_SHAPE = (1, 128, 56, 56)  # RepLKNet-31B stage 1 at 224 px, batch 1


def time_depthwise(arm: Arm, opts: RunOptions) -> dict[str, list[float]]:
    """Forward time of a k×k depthwise conv (ours: ``kernels.depthwise_conv2d`` with its automatic choice;
    PyTorch's ``F.conv2d`` on the NCHW input), timed side by side with the 3×3 conv, repeated."""
    import torch.nn.functional as F

    from ..deploy.bench import check_device
    from ..kernels import depthwise_conv2d
    from .framework import time_side_by_side

    dev = check_device(opts.device)
    k = int(arm.params["k"])
    n, c, h, w = arm.params.get("shape", _LK_SHAPE)
    if opts.quick:
        c, h, w = 32, 28, 28
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, h, w, generator=g).to(dev)
    weights = {kk: (torch.randn(c, 1, kk, kk, generator=g) / kk).to(dev) for kk in (3, k)}

    def ours(kk: int):
        return lambda: depthwise_conv2d(x, weights[kk], None)

    def theirs(kk: int):
        return lambda: F.conv2d(x, weights[kk], None, padding=kk // 2, groups=c)

    fns = {"ours": ours(k), "torch": theirs(k), "ours3": ours(3), "torch3": theirs(3)}
    repeats, rounds = (2, 2) if opts.quick else (5, 3)
    with torch.inference_mode():
        ms = time_side_by_side(fns, repeats, rounds, target_s=0.005 if opts.quick else 0.05, device=dev)
    growth = k * k / 9  # multiply-adds relative to the 3×3 conv
    out = {"ours_ms": ms["ours"], "torch_ms": ms["torch"],
           "ours_growth_over_macs": [a / b / growth for a, b in zip(ms["ours"], ms["ours3"])],
           "torch_growth_over_macs": [a / b / growth for a, b in zip(ms["torch"], ms["torch3"])]}
    out["macs_M"] = [n * c * h * w * k * k / 1e6]
    return out


LARGE_KERNEL_COST = Experiment(
    name="large-kernel-cost",
    title="RepLKNet guideline 1: large depthwise convolutions cost little time",
    paper="RepLKNet (Ding et al., CVPR 2022), §3 guideline 1 (\"large depth-wise convolutions can be efficient "
          "in practice\") and its latency table of depthwise conv kernel sizes",
    claim="A depthwise convolution is memory-bound: its multiply-adds grow with k² but its time grows far "
          "less, so a 31×31 depthwise conv costs a small multiple of a 3×3 one (with a suitable "
          "implementation; the paper's is a GPU kernel).",
    setup="One depthwise conv forward on RepLKNet-31B's stage-1 input at batch 1 (128 channels, 56×56, "
          "float32, NCHW), kernel 3 … 31, bias-free, in inference mode. 'ours' is "
          "`moderncnn.kernels.depthwise_conv2d` (automatic choice: on the CPU oneDNN's channels_last path from "
          "k = 15 on, docs/kernels.md), 'torch' is `F.conv2d(groups=C)` on the NCHW input. Each time is the "
          "median of 3 rotating rounds, side by side with the 3×3 conv, each sample ≥ 50 ms of back-to-back calls "
          "(so time slices lost to other processes average out); 5 repeats give the spread. "
          "`growth over MACs` = (time(k) / time(3)) / (k² / 9): below 1 means the time grows slower than the "
          "arithmetic. On a machine with a GPU, run it with `--device cuda`.",
    arms=tuple(Arm(f"k{k}", "", params={"k": k}, label=f"{k}×{k}") for k in range(3, 32, 2)),
    claims=(
        Claim("ours: 31×31 time grows slower than its MACs", "ours_growth_over_macs", "k31", "<", "k3"),
        Claim("ours: 13×13 time grows slower than its MACs", "ours_growth_over_macs", "k13", "<", "k3"),
        Claim("ours at 31×31 faster than PyTorch's NCHW conv", "ours_ms", "k31", "<", "k31", b_metric="torch_ms"),
    ),
    seeds=1,
    speeds=(),
    measure=time_depthwise,
    needs_training=False,
    plot_metrics=("ours_ms", "torch_ms", "ours_growth_over_macs"),
)


# -- 9. ConvNeXt: the modernization roadmap -----------------------------------------------------------------
# paper Figure 2: ImageNet-1K top-1 of every step (ResNet-50 trained with the ConvNeXt recipe: 78.8)
_ROADMAP_PAPER = {"0_resnet50": 78.8, "1_stage_ratio": 79.4, "2_patchify_stem": 79.5, "3_depthwise": 78.3,
                  "4_width": 80.5, "5_inverted_bottleneck": 80.6, "6_move_up_dwconv": 79.9, "7_kernel5": 80.4,
                  "7_kernel7": 80.6, "7_kernel9": 80.6, "7_kernel11": 80.6, "8_gelu": 80.6,
                  "9_fewer_activations": 81.3, "10_fewer_norms": 81.4, "11_layernorm": 81.5,
                  "12_convnext": 82.0}


def _roadmap_small(step: str) -> dict[str, Any]:
    """The step's network, shrunk alike for every step: a third of the depth (at least 1), an eighth of the
    widths; every switch of the step kept."""
    from ..models.convnext_roadmap import ROADMAP

    cfg = ROADMAP[step]
    return {"depths": tuple(max(1, d // 3) for d in cfg.depths), "dims": tuple(d // 8 for d in cfg.dims),
            "stem_width": cfg.stem_width // 8, "drop_path_rate": 0.0}


def roadmap_full_size(arm: Arm, opts: RunOptions) -> dict[str, list[float]]:
    """Parameters and GMACs of the step at full size (224 px, 1000 classes), as the paper's Figure 2 counts."""
    from ..analysis.complexity import build_meta, count_gmacs, count_params

    model = build_meta(arm.model)
    return {"full_params_M": [count_params(model) / 1e6], "full_gmacs_224": [count_gmacs(model, 224, 3)]}


CONVNEXT_ROADMAP = Experiment(
    name="convnext-roadmap",
    title="ConvNeXt: the modernization roadmap, step by step",
    paper="ConvNeXt (Liu et al., CVPR 2022), §2 and Figure 2",
    claim="Modernizing ResNet-50 one design decision at a time (stage ratio, patchify stem, depthwise conv, "
          "width, inverted bottleneck, larger kernel, GELU, fewer activations and norms, LayerNorm, separate "
          "downsampling) raises ImageNet top-1 from 78.8 to 82.0 at about the same FLOPs (4.1 → 4.5 G).",
    setup="Every step of the ladder (`convnext_roadmap_*`, docs/architectures.md) shrunk alike: a third of the "
          "depths (at least one block), an eighth of the widths, no drop path; Fashion-MNIST upscaled to 64 px "
          "(last maps 2×2), AdamW lr 2e-3, weight decay 0.05, 2 epochs on 10,000 training images, 2,000 test "
          "images, 2 seeds. "
          "Full-size parameters and GMACs at 224 px are counted beside (the paper's axis). Times at batch 32.",
    arms=tuple(Arm(step, f"convnext_roadmap_{step}", _roadmap_small(step), paper=p, label=step.split("_", 1)[1])
               for step, p in _ROADMAP_PAPER.items()),
    claims=(
        Claim("ConvNeXt (step 12) beats ResNet-50 (step 0)", "top1", "12_convnext", ">", "0_resnet50"),
        Claim("at about the same FLOPs (within 10%)", "full_gmacs_224", "12_convnext", "==", "0_resnet50",
              rel_tol=0.10),
    ),
    train={**ADAMW, "img_size": 64, "epochs": 2, "train_samples": 10000, "val_samples": 2000},
    quick={**QUICK, "img_size": 32},
    seeds=2,
    speeds=("train_step", "infer"),
    infer_batch=32,
    measure=roadmap_full_size,
    paper_metric="ImageNet top-1 (Fig. 2)",
    plot_metrics=("top1", "full_gmacs_224", "infer_ms"),
)

EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (
    REPVGG_BRANCHES, MOBILENEXT_BLOCK, MOBILENEXT_IDENTITY, EFFNETV2_FUSED, PROGRESSIVE, REPLKNET_KERNELS,
    MBV2_LARGE_KERNEL, LARGE_KERNEL_COST, CONVNEXT_ROADMAP)}
