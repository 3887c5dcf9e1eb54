"""PyTorch checkpoint -> Flax params converters, one module per source model.

Run as `python -m convert.<model>` from a checkout. Shared machinery is in `convert.common`;
`python -m convert.verify FIXTURE_DIR` checks a converter + module against a golden fixture.
"""
