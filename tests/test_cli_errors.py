"""One error path: every subcommand answers bad values with ONE line ``moderncnn <command>: error: ...`` and
exit code 2, before any work starts, and no traceback reaches the user (run in-process: fast)."""

from __future__ import annotations

import pytest
import torch

from moderncnn.cli import main, one_line

TINY = ["--model", "convnext_atto", "--model-kwargs", "depths=[1,1]", "dims=[8,16]", "--img-size", "16", "-b", "2",
        "--epochs", "1", "-j", "0", "--no-progress", "--no-plots", "--no-fuse"]

# (argv with {tmp} for a scratch folder, a regex the one line must match)
BAD = [
    # train: the values of issue 11, every one checked by TrainConfig's table before anything is built
    (["train", "-b", "0"], r"batch_size \(--batch-size\) must be an integer >= 1, got 0"),
    (["train", "-b", "-5"], r"--batch-size\) must be an integer >= 1, got -5"),
    (["train", "--img-size", "-32"], r"img_size \(--img-size\) must be an integer in \[1, 16384\]"),
    (["train", "-j", "-1"], r"workers \(--workers\) must be an integer >= 0"),
    (["train", "--threads", "-1"], r"threads \(--threads\) must be an integer >= 1"),
    (["train", "--lr", "-1"], r"lr \(--lr\) must be a number in \(0, 1000\]"),
    (["train", "--drop", "1.5"], r"drop \(--drop\) must be a number in \[0, 1\)"),
    (["train", "--drop-path", "2"], r"drop_path \(--drop-path\) must be a number in \[0, 1\)"),
    (["train", "--smoothing", "2"], r"smoothing \(--smoothing\) must be a number in \[0, 1\)"),
    (["train", "--scale", "1", "0"], r"scale \(--scale\) must be 2 values"),
    (["train", "--opt", "bogus"], r"opt \(--opt\) must be one of sgd, momentum"),
    (["train", "--lr-base-size", "0"], r"lr_base_size \(--lr-base-size\) must be an integer >= 1"),
    (["train", "--seed", "2^70"], r"argument --seed: invalid int value: '2\^70'"),
    (["train", "--seed", str(2**70)], r"seed \(--seed\) must be an integer in \[0, "),
    (["train", "--model-ema-decay", "5"], r"model_ema_decay \(--model-ema-decay\) must be a number in \[0, 1\)"),
    (["train", "--opt-betas", "2", "2"], r"opt_betas \(--opt-betas\) must be 2 values, each a number in \[0, 1\)"),
    (["train", "--val-samples", "0"], r"val_samples \(--val-samples\) must be an integer >= 1"),
    (["train", "--max-steps", "0"], r"max_steps \(--max-steps\) must be an integer >= 1"),
    (["train", "--mixup", "-1"], r"mixup \(--mixup\) must be a number >= 0"),
    (["train", "--hflip", "5"], r"hflip \(--hflip\) must be a number in \[0, 1\]"),
    (["train", "--clip-grad", "-1"], r"clip_grad \(--clip-grad\) must be a number > 0"),
    (["train", "--device", "bogus"], r"device \(--device\) must be cpu, cuda or cuda:N, got 'bogus'"),
    (["train", "--model-kwargs", "num_classes=5"], r"--model-kwargs num_classes=\.\.\. duplicates --num-classes"),
    (["train", "--model-kwargs", "dims=[1,"], r"--model-kwargs: dims=\[1,: the value is not valid YAML/JSON"),
    (["train", "--model-kwargs", "dims"], r"--model-kwargs: expected key=value, got 'dims'"),
    (["train", "--epochs", "many"], r"argument --epochs: invalid int value: 'many'"),
    (["train", "--modle", "convnext_atto"], r"unknown option --modle \(did you mean --model"),
    (["train", "--recipe", "{tmp}/nowhere.yaml"], r"recipe file .*nowhere.yaml does not exist"),
    (["train", "--recipe", "{tmp}/types.yaml"], r"lr \(--lr\) must be a number in \(0, 1000\] .*got 'fast'"),
    (["train", "--recipe", "convnxt"], r"unknown recipe 'convnxt'. Did you mean convnext"),
    (["train", "--output", "{tmp}/afile"], r"--output .*afile is a file; expected a folder"),
    (["train", "--output", "{tmp}/afile/run"], r"--output .*afile/run: .*afile is a file, so nothing can be created"),
    (["train", *TINY, "--dataset", "imagefolder", "--data-dir", "{tmp}/images", "--num-classes", "1",
      "--output", "{tmp}/r"], r"--num-classes 1 is fewer than the 2 classes of the training data"),
    (["train", *TINY, "--dataset", "imagefolder", "--data-dir", "{tmp}/images", "--mean", "0.5", "0.5", "--std",
      "0.5", "0.5", "--output", "{tmp}/r"], r"--mean/--std give 2 values for 3-channel input"),
    (["train", *TINY, "--resume", "{tmp}/images", "--output", "{tmp}/images"], r"holds no checkpoint"),
    # eval
    (["eval", "--checkpoint", "{tmp}/run", "--val-samples", "0"], r"--val-samples must be an integer >= 1"),
    (["eval", "--checkpoint", "{tmp}/run", "-b", "0"], r"--batch-size must be an integer >= 1, got 0"),
    (["eval", "--checkpoint", "{tmp}/nowhere"], r"nowhere does not exist"),
    (["eval", "--checkpoint", "{tmp}/run", "--device", "bogus"], r"--device must be cpu, cuda or cuda:N, got 'bogus'"),
    # bench
    (["bench", "convnext_atto", "--iters", "0"], r"--iters must be an integer >= 1, got 0"),
    (["bench", "convnext_atto", "--rounds", "0"], r"--rounds must be an integer >= 1, got 0"),
    (["bench", "convnext_atto", "-b", "-1"], r"--batch must be an integer >= 1, got -1"),
    (["bench", "convnext_atto", "-b", "0"], r"--batch must be an integer >= 1, got 0"),
    (["bench", "convnext_atto", "--img-size", "0"], r"--img-size must be an integer in \[1, 16384\]"),
    (["bench", "nomatch_*"], r"no model matches 'nomatch_\*'"),
    (["bench", "convnext_atto", "-b", "100000000"], r"-b 100000000 at 224 px does not fit in memory"),
    (["bench", "convnext_atoo"], r"(?i)convnext_atoo.*did you mean.*convnext_atto"),
    (["bench", "convnext_atto", "--out", "{tmp}"], r"--out .* is a folder; expected a file name"),
    # export
    (["export", "convnext_atto", "--out", "{tmp}"], r"--out .* is a folder; expected a file name"),
    (["export", "convnext_atto", "--out", "{tmp}/m.onnx", "--img-size", "0"], r"--img-size must be an integer in"),
    (["export", "convnext_atto", "--out", "{tmp}/m.onnx", "--batch", "1"], r"--batch must be an integer >= 2"),
    (["export", "repvgg_a", "--out", "{tmp}/m.onnx"],
     r"(?i).repvgg_a. is neither a file nor a registered model.*did you mean.*repvgg_a0"),
    # fuse
    (["fuse", "{tmp}/nowhere", "--out", "{tmp}/f.safetensors"], r"nowhere does not exist"),
    (["fuse", "{tmp}/run", "--out", "{tmp}/afile/f.safetensors"], r"afile is a file, so nothing can be created"),
    (["fuse", "{tmp}/run", "--out", "{tmp}/f.safetensors", "--num-classes", "0"], r"--num-classes must be an integer"),
    # convert
    (["convert", "{tmp}/w.pth", "{tmp}/o.safetensors", "--model", "convnext_atto", "--model-kwargs", "depths=[1,"],
     r"--model-kwargs depths=\[1,: .*(JSON|YAML)"),
    (["convert", "{tmp}", "{tmp}/o.safetensors", "--model", "convnext_atto"], r"is a folder"),
    (["convert", "{tmp}/nowhere.pth", "{tmp}/o.safetensors", "--model", "convnext_atto"],
     r"nowhere.pth does not exist"),
    (["convert", "{tmp}/w.pth", "{tmp}/o.safetensors", "--model", "convnext_atto", "--num-classes", "0"],
     r"--num-classes must be an integer >= 1"),
    (["convert", "{tmp}/w.pth", "{tmp}/o.safetensors", "--model", "convnext_tinyy"],
     r"(?i)did you mean:? convnext_tiny"),
    # demo, info, the dispatcher
    (["demo", "--epochs", "0"], r"--epochs must be an integer >= 1"),
    (["demo", "--max-steps", "0"], r"--max-steps must be an integer >= 1"),
    (["demo", "-j", "-1"], r"--workers must be an integer >= 0"),
    (["info", "repvgg_a"], r"repvgg_a.*repvgg_a0"),
]
if torch.cuda.is_available():
    BAD = [case for case in BAD if "cuda" not in case[0]]
else:
    BAD.append((["train", "--device", "cuda", *TINY], r"--device cuda: this machine has no CUDA device"))


@pytest.fixture
def scratch(tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "run").mkdir()
    (tmp_path / "types.yaml").write_text("model: convnext_atto\nlr: fast\n")
    torch.save({"weight": torch.zeros(1)}, tmp_path / "w.pth")
    from PIL import Image

    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / "images" / split / c).mkdir(parents=True)
            Image.new("RGB", (16, 16)).save(tmp_path / "images" / split / c / "0.png")
    return tmp_path


def run(argv, capsys) -> tuple[int, str]:
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's own errors (and --help) exit
        rc = exc.code
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(a)[:60] for a, _ in BAD])
def test_every_bad_value_is_one_line_and_exit_2(scratch, capsys, argv, message):
    argv = [a.replace("{tmp}", str(scratch)) for a in argv]
    rc, err = run(argv, capsys)
    assert "Traceback" not in err
    lines = err.splitlines()
    assert rc == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"moderncnn {argv[0]}: error: "), err
    import re

    assert re.search(message, lines[0]), err


def test_unknown_command_and_dataloader_worker_errors_are_one_line(capsys):
    rc, err = run(["trian"], capsys)
    assert rc == 2 and err.count("\n") == 1 and err.startswith("moderncnn: error: argument COMMAND: invalid choice")
    # PyTorch re-raises a DataLoader worker's exception with the worker's traceback in its message
    from moderncnn.errors import DataError

    wrapped = DataError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                        "last):\n  File \"x.py\", line 1, in f\nmoderncnn.errors.DataError: cannot decode image a.png")
    assert one_line(wrapped) == "cannot decode image a.png"
    assert one_line(ValueError("two\nlines")) == "two lines"


@pytest.mark.parametrize("exc,rc,message", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), 2,
     r"^moderncnn info: error: out of memory: CUDA out of memory.*lower the batch size"),
    (ZeroDivisionError("division by zero"), 1,
     r"^moderncnn info: error: ZeroDivisionError: division by zero \(moderncnn did not expect this.*MODERNCNN_DEBUG"),
    (OSError(28, "No space left on device", "/runs/a/x"), 2, r"^moderncnn info: error: No space left on device: /runs"),
])
def test_errors_the_library_did_not_raise_on_purpose_are_one_line_too(monkeypatch, capsys, exc, rc, message):
    import re

    import moderncnn.analysis.cli as analysis_cli

    def boom(args):
        raise exc

    monkeypatch.setattr(analysis_cli, "_info", boom)
    got, err = run(["info", "convnext_atto"], capsys)
    assert got == rc and len(err.splitlines()) == 1 and re.search(message, err), err
    monkeypatch.setenv("MODERNCNN_DEBUG", "1")
    if rc == 1:
        with pytest.raises(ZeroDivisionError):
            main(["info", "convnext_atto"])


@pytest.mark.parametrize("argv", [["demo"], ["eval", "--checkpoint", "run"], ["bench"], ["list"], ["info", "x"],
                                  ["fuse", "run", "--out", "f.safetensors"], ["export", "m", "--out", "m.onnx"],
                                  ["convert", "w.pth", "o.safetensors", "--model", "m"], ["train"]])
def test_every_command_with_its_defaults_passes_the_checks(tmp_path, monkeypatch, argv):
    from moderncnn.cli import build_parser, check_arguments

    monkeypatch.chdir(tmp_path)
    check_arguments(build_parser(argv[0]).parse_args(argv))
