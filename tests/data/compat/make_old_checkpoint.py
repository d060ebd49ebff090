"""How tests/data/compat/ was made: a tiny run of train.py as it was before its restructuring
(commit f217b77, the parent of 85ce172), for tests/test_train_compat.py.

    mkdir /tmp/old && for f in train.py utils.py model.py; do
        git show f217b77:$f > /tmp/old/$f; done
    OMP_NUM_THREADS=1 python tests/data/compat/make_old_checkpoint.py /tmp/old tests/data/compat

It trains 2 epochs straight with the old code (the training images: tests/test_train.py's
`data` fixture, made the same way here), keeps its epoch-1 checkpoint (old format) as
checkpoint_epoch_1.pth, checks that the old code resuming that checkpoint ends epoch 2 where
the straight run did, and records the SHA-256 of the old epoch-2 generator and Adam state in
expected.json. The generator has 8 channels (train.py has no flag for it) so that the
checkpoint stays small.
"""
import functools
import hashlib
import json
import os
import shutil
import sys
import tempfile

import torch

FLAGS = ['--num_blocks', '1', '--crop_size', '32', '--batch_size', '2', '--iters_per_epoch', '2',
         '--workers', '0', '--log_every', '1000', '--amp', 'off', '--upscale_factor', '2',
         '--epochs', '2', '--keep', '0', '--seed', '3']
CHANNELS = 8


def training_images(folder: str) -> None:
    """tests/test_train.py's four 64 px training images."""
    from PIL import Image
    from skimage import data as sk
    os.makedirs(folder)
    images = [sk.astronaut()[100:164, 180:244], sk.coffee()[150:214, 200:264],
              sk.chelsea()[100:164, 150:214], sk.rocket()[100:164, 100:164]]
    for i, img in enumerate(images):
        Image.fromarray(img).save(os.path.join(folder, f'{i}.png'))


def digest(state: dict) -> dict:
    """SHA-256 of a checkpoint's generator and its Adam state, tensors in key order."""
    def sha(tensors) -> str:
        h = hashlib.sha256()
        for key, t in tensors:
            h.update(key.encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                     if t.dim() else t.detach().cpu().reshape(1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()
    opt = [(f'{i}.{k}', v) for i, s in sorted(state['opt_g']['state'].items())
           for k, v in sorted(s.items()) if isinstance(v, torch.Tensor)]
    return {'generator': sha(sorted(state['generator'].items())), 'opt_g': sha(opt)}


def main(old_dir: str, dest: str) -> None:
    torch.set_num_threads(1)
    sys.path.insert(0, old_dir)
    import model
    import train
    train.Generator = functools.partial(model.Generator, channels=CHANNELS)
    tmp = tempfile.mkdtemp()
    training_images(os.path.join(tmp, 'train'))

    def fit(out, *extra):
        rc = train.main(['--trainset_dir', os.path.join(tmp, 'train'), '--out_dir', out,
                         *FLAGS, *extra])
        assert rc in (0, None), rc

    def ckpt(out, epoch):
        return torch.load(os.path.join(out, 'checkpoints', f'checkpoint_epoch_{epoch}.pth'),
                          map_location='cpu', weights_only=True)

    straight, resumed = os.path.join(tmp, 'straight'), os.path.join(tmp, 'resumed')
    fit(straight)
    os.makedirs(os.path.join(resumed, 'checkpoints'))
    shutil.copy(os.path.join(straight, 'checkpoints', 'checkpoint_epoch_1.pth'),
                os.path.join(resumed, 'checkpoints'))
    fit(resumed, '--resume', '1')
    expected = digest(ckpt(straight, 2))
    assert digest(ckpt(resumed, 2)) == expected, 'the old code does not resume bitwise'
    shutil.copy(os.path.join(straight, 'checkpoints', 'checkpoint_epoch_1.pth'), dest)
    with open(os.path.join(dest, 'expected.json'), 'w') as f:
        json.dump({'commit': 'f217b77', 'flags': FLAGS, 'channels': CHANNELS,
                   'epoch_2_sha256': expected}, f, indent=1)
    shutil.rmtree(tmp)


if __name__ == '__main__':
    main(*sys.argv[1:])
