"""The parity tests' reference data is where the other tests look for it.

Several golden-file tests are parametrized over the key files they find; without the data they would
collect nothing and pass vacuously. This test makes the absence a failure that says what to do.
"""

from __future__ import annotations

from conftest import OFFICIAL, SHARED

GOLDEN = ["convnext_tiny_cfg", "mobilenext_050_div2", "mobilenext_100", "replknet_tiny", "repvgg_tiny"]
KEY_PREFIXES = ["official_convnext_", "official_mobilenext_", "official_replknet_", "official_repvgg_"]


def test_reference_data_is_present():
    hint = (f"the official golden files are missing from {OFFICIAL}: put the project's shared/ folder beside "
            f"the checkout (as CI does) or point MODERNCNN_SHARED at it (now {SHARED})")
    missing = [g for g in GOLDEN if not (OFFICIAL / f"{g}.safetensors").is_file()]
    assert not missing, f"{hint}; missing: {', '.join(missing)}"
    keys = [p.name for p in (OFFICIAL / "keys").glob("*.keys.txt")]
    for prefix in KEY_PREFIXES:
        assert any(k.startswith(prefix) for k in keys), f"{hint}; no {prefix}*.keys.txt"
