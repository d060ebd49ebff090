"""Run train.py's main() under any launcher and leave per-rank evidence for the tests.

    python tests/ddp_probe.py DUMP_DIR <train.py arguments>

Every training process writes DUMP_DIR/rank<r>.pid when its run starts and, when it ends,
DUMP_DIR/rank<r>.json: hashes of its generator and discriminator parameters, the sample
indices its EpochSampler drew in each epoch, and every file it opened for writing or renamed
into place during the run. If DUMP_DIR/poison exists, the rank it names trains on NaN
images. The patches below are plain wrappers set at import time, so they also hold in the
processes that torch.multiprocessing.spawn and Lightning start (both re-import this file);
train.py itself carries no test code.
"""
import builtins
import hashlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train  # noqa: E402
import utils  # noqa: E402

DUMP = sys.argv[1]
SEEN = {}     # epoch -> indices this process drew
BUILT = {}    # the TrainState build() returned (wrap() fills in the wrappers later)
WROTE = []    # files this process wrote while training
RECORDING = [False]
POISONED = [False]
_open, _replace = builtins.open, os.replace


def recording_open(file, mode='r', *a, **k):
    if RECORDING[0] and isinstance(file, (str, os.PathLike)) and set(mode) & set('wax+'):
        WROTE.append(os.fspath(file))
    return _open(file, mode, *a, **k)


def recording_replace(src, dst, *a, **k):
    if RECORDING[0]:
        WROTE.append(os.fspath(dst))
    return _replace(src, dst, *a, **k)


_getitem = utils.TrainSet.__getitem__


def getitem(self, i):
    lr, hr = _getitem(self, i)
    return (lr * float('nan'), hr) if POISONED[0] else (lr, hr)


class RecordingSampler(train.EpochSampler):
    def __iter__(self):
        idx = list(super().__iter__())
        SEEN[self.epoch] = idx
        return iter(idx)


def digest(module) -> str:
    h = hashlib.sha256()
    for name, p in utils.unwrap(module).named_parameters():
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


_build, _run = train.build, train.run


def build(args, rt):
    BUILT['s'] = _build(args, rt)
    return BUILT['s']


def run(args, rt):
    with open(os.path.join(DUMP, f'rank{rt.rank}.pid'), 'w') as f:
        f.write(str(os.getpid()))
    poison = os.path.join(DUMP, 'poison')
    if os.path.exists(poison):
        with _open(poison) as f:
            POISONED[0] = int(f.read()) == rt.rank
    RECORDING[0] = True
    try:
        _run(args, rt)
    finally:
        RECORDING[0] = False
    s = BUILT['s']
    out = {'rank': rt.rank, 'world_size': rt.world_size, 'G': digest(s.G),
           'D': digest(s.D) if s.D is not None else None, 'seen': SEEN, 'wrote': WROTE}
    with open(os.path.join(DUMP, f'rank{rt.rank}.json'), 'w') as f:
        json.dump(out, f)


train.EpochSampler, train.build, train.run = RecordingSampler, build, run
utils.TrainSet.__getitem__ = getitem
builtins.open, os.replace = recording_open, recording_replace

if __name__ == '__main__':
    sys.exit(train.main(sys.argv[2:]))
