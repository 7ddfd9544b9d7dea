"""The parity tests' reference data ships with the repository, where the other tests look for it.

Several golden-file tests are parametrized over the key files they find; without the data they would
collect nothing and pass vacuously. These tests make an absent or incomplete ``tests/data/official``
a failure that names the missing paths, and keep the shipped data small.
"""

from __future__ import annotations

from conftest import OFFICIAL, SHARED_OFFICIAL, official_key_files

GOLDEN = ["convnext_tiny_cfg", "mobilenext_050_div2", "replknet_tiny", "repvgg_tiny"]
KEY_PREFIXES = ["official_convnext_", "official_mobilenext_", "official_replknet_", "official_repvgg_"]
MAX_BYTES = 10_000_000  # what a clone of the repository may carry for its tests


def test_reference_data_is_present():
    manifest = OFFICIAL / "MANIFEST"
    assert manifest.is_file(), f"{manifest} is missing: the shipped test data is incomplete (restore tests/data)"
    listed = manifest.read_text().split()
    assert {f"{g}.safetensors" for g in GOLDEN} <= set(listed)
    missing = [str(OFFICIAL / name) for name in listed if not (OFFICIAL / name).is_file()]
    assert not missing, f"test data missing: {', '.join(missing)}"
    for prefix in KEY_PREFIXES:
        shipped = [p for p in official_key_files(prefix) if p.parent == OFFICIAL / "keys"]
        assert shipped, f"no {OFFICIAL / 'keys' / prefix}*.keys.txt"


def test_shipped_reference_data_is_small():
    files = [p for p in OFFICIAL.rglob("*") if p.is_file()]
    total = sum(p.stat().st_size for p in files)
    assert total <= MAX_BYTES, f"tests/data/official holds {total / 1e6:.2f} MB (> {MAX_BYTES / 1e6:.0f} MB)"


def test_key_files_merge_shipped_and_full_data():
    """The full reference data only adds layouts; the shipped copy of a file is the one used."""
    for prefix in KEY_PREFIXES:
        paths = official_key_files(prefix)
        names = [p.name for p in paths]
        assert names == sorted(set(names))
        assert all(p.parent in (OFFICIAL / "keys", SHARED_OFFICIAL / "keys") for p in paths)
        assert all(p.parent == OFFICIAL / "keys" for p in paths if (OFFICIAL / "keys" / p.name).is_file())
