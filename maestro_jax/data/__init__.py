"""Training data for the CIM: preparing a TFDS-format audio-visual dataset (`prepare`: frames,
ImageBind mel clips, 16 kHz audio per 10 s clip), curating it (`curate`: static, silent and
off-topic clips dropped by ImageBind similarities), an optional VAE latents cache
(`latent_cache`), and the grain input pipeline the trainer reads (`pipeline`). The on-disk
format: `tfds_format`; frame selection and resizing: `frames`; a synthetic dataset for smoke
runs: `synthetic`. Preparation and curation run as Apache Beam pipelines (`beam_pipelines`, the
optional `.[data]` extra, imported only when they run); the synthetic and toy-world writers build
their records in this process with the same `make_clip_record` + `serialize_record`.

The commands run from a checkout (`python -m data.prepare`, `data.curate`,
`data.cache_latents`; see the README's "Training the CIM").
"""
