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


def test_data_modules_forward_common_options_with_their_own_defaults():
    """Data modules re-declare only the options whose default they change; the parser (and so
    ``mtlora fit --help``) still offers every common option, with the data set's default."""
    import inspect

    from jsonargparse import ArgumentParser

    from mtlora.data import (
        ImageFolderDataModule,
        NYUDDataModule,
        PascalContextDataModule,
        SyntheticDataModule,
    )
    from mtlora.data.datamodule import MultiTaskDataModule

    base = dict(inspect.signature(MultiTaskDataModule.__init__).parameters)
    del base["self"]
    fixed = {ImageFolderDataModule: {"augment"}}  # prediction never augments
    for cls in (SyntheticDataModule, PascalContextDataModule, NYUDDataModule, ImageFolderDataModule):
        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(cls, "data")
        defaults = parser.get_defaults().data
        own = inspect.signature(cls.__init__).parameters
        for name, param in base.items():
            if name in fixed.get(cls, ()):
                assert name not in defaults.keys(), (cls.__name__, name)
                continue
            expected = own[name].default if name in own else param.default
            assert defaults[name] == expected, (cls.__name__, name)
    assert NYUDDataModule(root="x").transform_options["rotation"] == 0.0  # the default reaches the base
