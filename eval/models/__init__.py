"""Own implementations of the networks VBench scores with (CLIP, ViCLIP, AMT-S), loading the
published checkpoints with strict key matching and without torchvision."""
