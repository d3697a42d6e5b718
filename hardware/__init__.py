"""Everything that touches the outside world: the light interlock and light sources, spiking backends."""
