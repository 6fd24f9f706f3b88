"""Exact speed substitutes and the per-device policy that applies them; mixed precision; CUDA graphs."""
