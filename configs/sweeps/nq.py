"""N_Q sweep (paper Table 2): one trained CIM per number of queries, N_Q in {1, 5, 10, 15, 20}.

  python -m maestro_jax.sweep --config=configs/sweeps/nq.py ... \
      --config.checkpoints='1=ckpt/cim_q1,5=ckpt/cim_q5,10=ckpt/cim_q10,15=ckpt/cim_q15,20=ckpt/cim_q20'
  python -m maestro_jax.sweep --config=configs/sweeps/nq.py:runlocal   (random tiny CIMs, N_Q 1, 2, 4)
"""

from maestro_jax.evaluation.sweep_config import sweep_config


def get_config(arg=None):
    return sweep_config(arg or "default", "num_queries", (1, 5, 10, 15, 20), (1, 2, 4), "nq")
