"""Online decoders: pure computation on spike counts, no sockets and no clocks (time is passed in)."""
