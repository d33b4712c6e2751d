"""Shipped experiment configs (installed as ``stp_jax.configs``; loaded with
``stp_jax.config.load("NAME[:variants]")`` or ``--config NAME[:variants]``).

  tiny_camxtime     the embedded default: a small SpaceTimePilot DiT on procedural Cam×Time scenes (CPU)
  stp_1_3b          SpaceTimePilot 1.3B fine-tuned from converted Wan2.1-T2V-1.3B weights
  stp_14b           SpaceTimePilot 14B on a pod
  recammaster_1_3b  ReCamMaster 1.3B (camera control only)

Each file's ``get_config(variants)`` builds on stp_jax.config.base(); copy one to start your own.
"""
