"""Dataset preparation, curation and the grain input pipeline for training the CIM.

Steps (run from a checkout; spec `maestro.md`, "Training the CIM" and "Data curation"):

    python -m maestro_jax.data.prepare --input DIR --labels FILE_OR_NONE --layout vggsound|landscape|frames_wav \
        --out OUT [--resolution 512] [--workers N] [--frames_rule default|release]
    python -m maestro_jax.data.curate --data OUT --imagebind CKPT_DIR|random-tiny --out CURATED
    # training: maestro_jax.data.pipeline.make_dataset(OUT or CURATED, 'train', batch_size=..., seed=...)

On-disk format of a prepared (or curated) dataset folder OUT:

    OUT/prep_config.json      options the records were made with (a resumed run must match)
    OUT/classes.json          ["class name", ...]: label_index -> label (the text target)
    OUT/manifest.jsonl        one JSON line per record (clip_id, source, label, label_index,
                              split, shard, index, part, row, start, duration, num_frames, fps,
                              frame_indices, flow_mag, audio_peak, audio_rms [, similarities])
    OUT/errors.jsonl          files/clips that could not be read (appended; never fatal)
    OUT/parts/<split>/*.array_record + *.json   committed work units (the source of truth)
    OUT/maestro_av/1.0.0/     the TFDS dataset: maestro_av-<split>.array_record-XXXXX-of-YYYYY
                              (hard links of the parts), dataset_info.json, features.json

Read it with `tfds.data_source('maestro_av', split=..., data_dir=OUT)` or
`maestro_jax.maestro_jax.data.pipeline.make_dataset(OUT, split, ...)`. Every record holds exactly the keys of
`data.prepare.make_features`: clip_id, label, label_index, frames, mel [, audio] [, latents].
"""

DATASET_NAME = "maestro_av"
DATASET_VERSION = "1.0.0"
