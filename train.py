"""Train any zoo model with one Lightning loop (the code is ``zoo.training``; ``zoo-train`` is the same).

    python train.py -c configs/digits_seresnet.yaml               # fit, test the best checkpoint, export
    python train.py fit -c configs/digits_seresnet.yaml --trainer.max_epochs 3
    python train.py test -c configs/digits_seresnet.yaml --ckpt_path best
    python train.py --help
"""
import sys

from zoo.training import main

if __name__ == "__main__":
    sys.exit(main())
