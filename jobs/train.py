"""Main job: distributed DeblurGAN training on Ray Train (`ray job submit -- python jobs/train.py`).

Not built yet: the training issue makes this real. Until then it says what it would do and exits 2.
"""
import sys

if __name__ == "__main__":
    print(
        "jobs/train.py: training is not implemented yet. It will: start or join Ray, prepare the embedded\n"
        "`sample` shards, and train a small unet_fpn generator with WGAN-GP on CPU workers via TorchTrainer.",
        file=sys.stderr,
    )
    sys.exit(2)
