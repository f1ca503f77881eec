"""Test from a BasicSR option file, as the IGConv repository's command (engine/basicsr):

    python igconv/test.py -opt X.yml
"""
import os
import sys

sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # the repository root, not igconv/

if __name__ == '__main__':
    from engine.basicsr.cli import main
    sys.exit(main(sys.argv[1:], 'test', 'igconv/test.py'))
