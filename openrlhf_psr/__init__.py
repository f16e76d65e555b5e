"""openrlhf-psr."""
