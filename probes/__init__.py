"""Persona directions: contrast sets, per-layer directions and probes, steering vectors."""

from probes.contrast import ContrastItem, contrast_activations, filter_by_judge, filter_pairs, sample_contrast
from probes.directions import Directions, DirectionStack, fit_directions
from probes.steering import steering_vectors

__all__ = [
    "ContrastItem",
    "DirectionStack",
    "Directions",
    "contrast_activations",
    "filter_by_judge",
    "filter_pairs",
    "fit_directions",
    "sample_contrast",
    "steering_vectors",
]
