import builtins
import sys

from moderncnn import plotting


def test_pyplot_present_uses_agg():
    plt = plotting.pyplot("a test figure")
    assert plt is not None
    import matplotlib

    assert matplotlib.get_backend().lower() == "agg"


def test_pyplot_missing_notes_once(monkeypatch, capsys):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    monkeypatch.delitem(sys.modules, "matplotlib", raising=False)
    monkeypatch.setattr(plotting, "_noted", set())
    assert plotting.pyplot("curves.png") is None
    assert plotting.pyplot("curves.png") is None
    err = capsys.readouterr().err
    assert err.count("curves.png is not drawn") == 1
