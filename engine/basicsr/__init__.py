r"""BasicSR option files run here: the IGConv repository's commands, verbatim.

    python igconv/train.py -opt options/train/EDSR/EDSRIGPlus_DIV2K.yml
    python igconv/test.py -opt options/test/EDSR/EDSR_IGConvPlus_DIV2K.yml
    python -m torch.distributed.launch --nproc_per_node=4 --master_port=25000 igconv/train.py -opt X.yml \
        --launcher pytorch
    torchrun --nproc_per_node=4 igconv/train.py -opt X.yml --launcher pytorch

(``python train.py -opt X.yml`` / ``python test.py -opt X.yml`` are the same commands.)

* ``options``: the command line and the option file, every key checked, handled or refused in one line.
* ``network``: ``network_g`` through the model registry, BasicSR weight loading, the ``model_type``'s
  test-time forward, the datasets (``datasets.paired``).
* ``evaluation``: BasicSR's validation of one dataset (uint8, Y with +16, crop = scale) and its log lines.
* ``training``: the iteration loop, checkpoints ``net_g_<iter>.pth`` / ``<iter>.state``, bit-exact resume.
* ``testing``: every test dataset of an option file.
* ``folders``: ``experiments/<name>/``, ``results/<name>/``, the log; ``launch``: processes and devices.
* ``cli``: the entry point shared by ``igconv/*.py`` and ``train.py`` / ``test.py``.
"""
