"""The shard format, image preparation, the one-shard writer and the split builder."""
