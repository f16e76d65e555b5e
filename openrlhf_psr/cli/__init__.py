"""Command-line entry points: ``openrlhf-psr`` and ``python -m openrlhf_psr.cli.<stage>`` modules."""
