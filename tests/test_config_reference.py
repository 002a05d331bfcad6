"""docs/CONFIG.md documents every model and data option and matches the code."""

from mtlora.tools.config_reference import OUT, generate


def test_config_reference_is_current_and_complete():
    text = generate()
    assert "(undocumented)" not in text, [line for line in text.splitlines() if "(undocumented)" in line]
    assert OUT.read_text() == text, "docs/CONFIG.md is stale: run `python -m mtlora.tools.config_reference`"
    for option in (
        "`shared_rank`",
        "`task_rank`",
        "`patch_merging`",
        "`plan`",
        "`pretrained`",
        "`root`",
        "`border_label`",
        "`eval_resolution`",
        "`delta_m_baseline`",
    ):
        assert option in text
