"""The experiments: the main job (`track`), the defences harness, steering, the diversity sweep and
direction validation, built from declared stages (`anchor.stages`) over the metrics, judges and
reports one level up. Only this subpackage imports `train`; `analysis.<module>` never does."""
