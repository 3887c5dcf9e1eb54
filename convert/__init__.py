"""PyTorch checkpoint -> Flax params converters, one package per source model.

Run as `python -m convert.<model>` from a checkout. Shared machinery is in `convert.common`;
`python -m convert.verify FIXTURE_DIR` checks a converter + module against a golden fixture.

Command pattern (absl flags are process-global, so defining one twice is an error): each
converter is a package whose `__init__.py` is the library (tables, `convert_*` functions, fixture
checks; it defines no flags and may be imported by anything), and whose `__main__.py` is the
command (`python -m convert.unet ...` runs it): module-level absl flags, a thin `main(argv)`, run
with `convert.cli.run`. Nothing imports a `__main__.py` except tests, which call
`convert.cli.call(main, argv)`. Flags that several commands take (`--trust_pickle`,
`--torch_config`, `--ldm_config`, `--format`) are defined once, in `convert.cli`, so all commands
can be loaded into one process.
"""
