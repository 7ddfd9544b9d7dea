"""Progressive learning schedules against the paper's and the released code's tables (docs/training.md,
"Progressive learning")."""

import pytest

from moderncnn.training.progressive import ProgressiveSchedule, StageParams, from_model

# Released code (google/automl efficientnetv2 main.py + effnetv2_configs.py), docs/training.md:
# model: (sizes, RandAugment m, mixup = cutmix alpha, constant dropout)
OFFICIAL = {
    "s": ((171, 214, 257, 300), (5, 6.67, 8.33, 10), (0, 0, 0, 0), 0.2),
    "m": ((192, 256, 320, 384), (5, 8.33, 11.67, 15), (0, 0.067, 0.133, 0.2), 0.3),
    "l": ((192, 256, 320, 384), (5, 10, 15, 20), (0, 0.167, 0.333, 0.5), 0.4),
    "xl": ((192, 256, 320, 384), (5, 10, 15, 20), (0, 0.167, 0.333, 0.5), 0.4),
    "b0": ((144, 160, 176, 192), None, (0, 0, 0, 0), 0.2),
    "b1": ((144, 160, 176, 192), None, (0, 0, 0, 0), 0.2),
    "b2": ((148, 168, 188, 208), None, (0, 0, 0, 0), 0.3),
    "b3": ((156, 184, 212, 240), None, (0, 0, 0, 0), 0.3),
}


@pytest.mark.parametrize("variant", list(OFFICIAL))
def test_official_mode_matches_released_code_table(variant):
    sizes, ram, mix, dropout = OFFICIAL[variant]
    sched = from_model(f"tf_efficientnetv2_{variant}", 350, mode="official")
    stages = sched.stages
    assert [s.img_size for s in stages] == list(sizes)
    if ram is not None:
        assert [s.ra_magnitude for s in stages] == pytest.approx(ram, abs=5e-3)
    else:  # B0-B3 use V1 AutoAugment in the released code: no RandAugment schedule
        assert all(s.ra_magnitude == 0 for s in stages)
    assert [s.mixup_alpha for s in stages] == pytest.approx(mix, abs=5e-4)
    assert [s.cutmix_alpha for s in stages] == pytest.approx(mix, abs=5e-4)
    assert all(s.dropout == dropout for s in stages)  # dropout constant in the released code


# Paper Table 6 (Algorithm 1): v_i = v0 + (ve - v0) * i / (M - 1); sizes rounded to the nearest integer.
PAPER = {
    "s": ((128, 300), (5, 15), (0, 0), (0.1, 0.3)),
    "m": ((128, 380), (5, 20), (0, 0.2), (0.1, 0.4)),
    "l": ((128, 380), (5, 25), (0, 0.4), (0.1, 0.5)),
}


@pytest.mark.parametrize("variant", list(PAPER))
def test_paper_mode_matches_table6_linear_ramps(variant):
    size, ram, mix, drop = PAPER[variant]
    stages = from_model(f"efficientnetv2_{variant}", 40, mode="paper").stages
    for i, s in enumerate(stages):
        t = i / 3
        assert s.img_size == round(size[0] + (size[1] - size[0]) * t)
        assert s.ra_magnitude == pytest.approx(ram[0] + (ram[1] - ram[0]) * t)
        assert s.mixup_alpha == pytest.approx(mix[0] + (mix[1] - mix[0]) * t)
        assert s.dropout == pytest.approx(drop[0] + (drop[1] - drop[0]) * t)
    assert stages[0].img_size == size[0] and stages[-1].img_size == size[1]


def test_paper_mode_s_explicit_values():
    stages = from_model("efficientnetv2_s", 12, mode="paper").stages
    assert [s.img_size for s in stages] == [128, 185, 243, 300]  # 185.33 -> 185, 242.67 -> 243
    assert [s.ra_magnitude for s in stages] == pytest.approx([5, 8.3333, 11.6667, 15], abs=1e-3)
    assert [s.dropout for s in stages] == pytest.approx([0.1, 0.16667, 0.23333, 0.3], abs=1e-4)


def test_epoch_to_stage_mapping():
    sched = from_model("s", 350)
    # official split: stage k ends at int(350 * (k + 1) / 4) = 87, 175, 262, 350
    assert [(s.start_epoch, s.end_epoch) for s in sched.stages] == [(0, 87), (87, 175), (175, 262), (262, 350)]
    assert sched.stage_at(0).stage == 0 and sched.stage_at(86).stage == 0
    assert sched.stage_at(87).stage == 1 and sched.stage_at(87).img_size == 214
    assert sched.stage_at(349).stage == 3 and sched.stage_at(400).stage == 3
    assert sched.is_stage_start(175) and not sched.is_stage_start(176)
    even = ProgressiveSchedule(8, size=(16, 32), mode="paper")
    assert [s.epochs for s in even.stages] == [2, 2, 2, 2]
    with pytest.raises(ValueError, match="num_stages"):
        ProgressiveSchedule(3, num_stages=4)


def test_custom_schedule_batch_sizes_divisor_and_roundtrip():
    sched = ProgressiveSchedule(10, size=(16, 32), ra_magnitude=(0, 15), mixup=(0, 0.2), cutmix=0.0,
                                dropout=(0.0, 0.3), batch_sizes=[256, 192, 128, 64], mode="paper", size_divisor=8)
    stages = sched.stages
    assert [s.img_size for s in stages] == [16, 24, 24, 32]  # 16, 21.3, 26.7, 32 -> nearest multiple of 8
    assert [s.batch_size for s in stages] == [256, 192, 128, 64]
    assert all(s.cutmix_alpha == 0 for s in stages)
    assert isinstance(stages[0], StageParams)
    again = ProgressiveSchedule.from_dict(sched.to_dict())
    assert again == sched and again.stages == stages
    table = sched.table()
    assert "paper mode" in table and len(table.splitlines()) == 3 + 4
    with pytest.raises(ValueError, match="efficientnetv2_s"):
        from_model("convnext_tiny", 10)


def test_plot_writes_png(tmp_path):
    path = from_model("m", 20).plot(str(tmp_path / "progressive.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_random_mode_draws_sizes_with_matching_regularization():
    kw = dict(size=(32, 64), ra_magnitude=(2, 10), mixup=(0, 0.2), cutmix=0.0, dropout=(0.1, 0.3), mode="random")
    sched = ProgressiveSchedule(8, num_stages=4, seed=3, **kw)
    stages = sched.stages
    sizes = [s.img_size for s in stages]
    assert all(32 <= n <= 64 for n in sizes)
    # each regularizer sits where the drawn size sits in its range: larger image, stronger regularization
    for s in stages:
        t = (s.ra_magnitude - 2) / 8
        assert s.img_size == round(32 + 32 * t)
        assert s.dropout == pytest.approx(0.1 + 0.2 * t) and s.mixup_alpha == pytest.approx(0.2 * t)
    assert ProgressiveSchedule(8, num_stages=4, seed=3, **kw).stages == stages  # a resume rebuilds the same draw
    assert [s.img_size for s in ProgressiveSchedule(8, num_stages=4, seed=4, **kw).stages] != sizes
    assert ProgressiveSchedule.from_dict(sched.to_dict()) == sched
    assert [s.img_size for s in from_model("s", 8, "random", seed=3).stages] != [128, 185, 243, 300]
