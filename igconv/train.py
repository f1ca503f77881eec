r"""Train from a BasicSR option file, as the IGConv repository's command (engine/basicsr):

    python igconv/train.py -opt X.yml
    python -m torch.distributed.launch --nproc_per_node=4 --master_port=25000 igconv/train.py -opt X.yml \
        --launcher pytorch
"""
import os
import sys

sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # the repository root, not igconv/

if __name__ == '__main__':
    from engine.basicsr.cli import main
    sys.exit(main(sys.argv[1:], 'train', 'igconv/train.py'))
