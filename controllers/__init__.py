"""Trial-state tracking, perturbation schedulers, closed-loop policies and protocols: pure logic, no I/O."""
