"""Everything that knows about several processes: device mesh, FSDP2, Ulysses and Ring attention."""
