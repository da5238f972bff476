"""Video curation stages: probe/decode, scene cuts, clips, motion, quality, dedup, captions, shards."""
