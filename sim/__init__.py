"""Simulated rig: the delay-task mouse with a bilateral ALM model, speaking the public wire protocol."""
