"""BaseDataLayer: walking a source in batches, shuffling, background prefetch, saved position.

A data layer that reads records ``0 .. num_records - 1`` from a source (an HDF5 file list, an
LMDB, an image list) only says how many records there are and how to load a batch of them; this
base does the rest:

* **Walk.** Batches take the next ``batch_size`` records of the current order and wrap around to
  the next epoch in the middle of a batch (as Caffe does): with N = 52 and batch 8, the 7th batch
  is records 48..51, 0..3.
* **Shuffle.** With shuffling on, each epoch walks a fresh permutation (drawn when the epoch
  starts) from the layer's OWN random generator, seeded from minicaffe's process-wide generator
  at setup (so ``random_seed`` in the solver makes runs repeatable). Random crops and mirrors of
  the transformer are drawn from the same generator, in the same thread, in batch order.
* **Prefetch.** Batches are prepared by a background thread ``prefetch_count`` batches ahead
  (0 = prepare each batch when the net asks for it). The thread follows exactly the sequence the
  synchronous walk would, so the batches are identical with and without prefetching.
* **Position.** ``data_state()`` returns a ``DataLayerState`` (cursor, epoch, order, rng_state)
  describing the next batch the NET will consume, not the prefetch thread's position;
  ``restore_data_state`` discards prefetched batches and continues from that position, so a
  resumed run sees exactly the batches an uninterrupted one would.

Subclasses implement ``data_setup(top)`` (open the source, set ``self.num_records`` and
``self.batch_size``, optionally ``self.shuffle``, shape the tops) and ``load_batch(records, rng,
slot)`` returning one array per top. ``slot`` is a dict private to one in-flight batch where a
subclass may keep arrays to reuse (see :func:`slot_array`). Data layers run on the host
(``host_only``); the Net moves their tops to the GPU when the next layer runs there.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import weakref
from dataclasses import dataclass

import numpy as np

from minicaffe import backend
from minicaffe.errors import DataError, MinicaffeError
from minicaffe.layer import Layer

# MINICAFFE_PREFETCH=0 turns the background thread off everywhere (debugging, profiling).
_PREFETCH_ENV = "MINICAFFE_PREFETCH"


def slot_array(slot: dict, key: str, shape, dtype) -> np.ndarray:
    """A host array kept in ``slot`` under ``key``, reallocated only when shape or dtype change."""
    shape = tuple(int(d) for d in shape)
    arr = slot.get(key)
    if arr is None or arr.shape != shape or arr.dtype != np.dtype(dtype):
        arr = slot[key] = np.empty(shape, dtype=dtype)
    return arr


@dataclass
class _Walk:
    """Where a walk over the source stands: the next record is ``order[cursor]``."""

    cursor: int
    epoch: int
    order: np.ndarray | None  # None = identity; never modified in place once made
    rng: np.random.Generator

    def snapshot(self) -> tuple:
        return (self.cursor, self.epoch, self.order, self.rng.bit_generator.state)


class _Failure:
    """An exception raised in the prefetch thread, re-raised in the consumer."""

    def __init__(self, exc: BaseException):
        self.exc = exc


def _prefetch_loop(layer_ref, walk: _Walk, stop: threading.Event, free_q, ready_q) -> None:
    # Holds only a weak reference to the layer so an abandoned layer can be collected.
    while not stop.is_set():
        try:
            slot = free_q.get(timeout=0.2)
        except queue.Empty:
            if layer_ref() is None:
                return
            continue
        layer = layer_ref()
        if layer is None or stop.is_set():
            return
        try:
            item = layer._produce(walk, slot)
        except BaseException as exc:  # delivered to the consumer, which raises it
            ready_q.put(_Failure(exc))
            return
        finally:
            del layer
        ready_q.put(item)


class BaseDataLayer(Layer):
    """Common machinery of the data layers that walk a source (no bottoms; tops are batches).

    Subclasses set ``self.num_records``, ``self.batch_size`` and ``self.shuffle`` in
    ``data_setup`` and implement ``load_batch``. ``self.rand_skip`` > 0 starts the first walk at
    a random record in [0, rand_skip) (Caffe's rand_skip).
    """

    exact_num_bottom_blobs = 0
    min_top_blobs = 1
    host_only = True
    prefetch_count: int = 3

    num_records: int = 0
    batch_size: int = 1
    shuffle: bool = False
    rand_skip: int = 0

    # ------------------------------------------------------------------ subclass API
    def data_setup(self, top) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement data_setup")

    def load_batch(self, records: np.ndarray, rng: np.random.Generator, slot: dict) -> list:
        """Arrays (one per top, first axis = len(records)) for the given record indices."""
        raise NotImplementedError(f"{type(self).__name__} must implement load_batch")

    def new_order(self, rng: np.random.Generator) -> np.ndarray:
        """The order of one shuffled epoch (default: a uniform permutation of all records)."""
        return rng.permutation(self.num_records).astype(np.int64)

    # ------------------------------------------------------------------ setup
    def setup(self, bottom, top) -> None:
        seed = int(backend.rng().integers(2**63))
        self.data_setup(top)
        if self.batch_size <= 0:
            raise self.error(f"batch_size must be positive; received {self.batch_size}", DataError)
        if self.num_records <= 0:
            raise self.error("the data source holds no records", DataError)
        rng = np.random.default_rng(seed)
        order = self.new_order(rng) if self.shuffle else None
        skip = min(self.rand_skip, self.num_records)
        cursor = int(rng.integers(skip)) if skip > 0 else 0
        self._walk = _Walk(cursor, 0, order, rng)  # the producer's position
        self._consumed = self._walk.snapshot()  # the position of the net's next batch
        self._thread: threading.Thread | None = None
        self._sync_slot: dict = {}
        env = os.environ.get(_PREFETCH_ENV)
        if env is not None and env.strip() in ("0", "false", "no", "off"):
            self.prefetch_count = 0

    def reshape(self, bottom, top) -> None:
        """Tops take each batch's shape in forward (images may change size between batches)."""

    def backward(self, top, propagate_down, bottom) -> None:
        pass

    # ------------------------------------------------------------------ walking
    def _take(self, walk: _Walk, n: int) -> np.ndarray:
        """The next ``n`` record indices, wrapping (and reshuffling) at the end of each epoch."""
        out = np.empty(n, dtype=np.int64)
        filled, total = 0, self.num_records
        while filled < n:
            take = min(n - filled, total - walk.cursor)
            if walk.order is None:
                out[filled : filled + take] = np.arange(walk.cursor, walk.cursor + take)
            else:
                out[filled : filled + take] = walk.order[walk.cursor : walk.cursor + take]
            filled += take
            walk.cursor += take
            if walk.cursor >= total:
                walk.cursor = 0
                walk.epoch += 1
                if self.shuffle:
                    walk.order = self.new_order(walk.rng)
        return out

    def _produce(self, walk: _Walk, slot: dict):
        records = self._take(walk, self.batch_size)
        arrays = self.load_batch(records, walk.rng, slot)
        return arrays, walk.snapshot(), slot

    # ------------------------------------------------------------------ prefetch thread
    def _start(self) -> None:
        count = max(int(self.prefetch_count), 1)
        self._stop = threading.Event()
        self._free_q: queue.Queue = queue.Queue()
        self._ready_q: queue.Queue = queue.Queue()
        for _ in range(count):
            self._free_q.put({})
        self._thread = threading.Thread(
            target=_prefetch_loop,
            args=(weakref.ref(self), self._walk, self._stop, self._free_q, self._ready_q),
            name=f"minicaffe-prefetch-{self.name}",
            daemon=True,
        )
        weakref.finalize(self, self._stop.set)
        self._thread.start()

    def close(self) -> None:
        """Stop the prefetch thread (it restarts on the next forward)."""
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        thread.join()
        self._thread = None
        # The thread ran ahead: restart the walk at the net's position.
        self._walk = self._walk_from(self._consumed)

    def _walk_from(self, snap) -> _Walk:
        cursor, epoch, order, rng_state = snap
        rng = np.random.default_rng()
        rng.bit_generator.state = rng_state
        return _Walk(cursor, epoch, order, rng)

    def _next_batch(self):
        if self.prefetch_count <= 0:
            try:
                return self._produce(self._walk, self._sync_slot)
            except BaseException as exc:
                self._walk = self._walk_from(self._consumed)
                self._raise(exc)
        if self._thread is None:
            self._start()
        item = self._ready_q.get()
        if isinstance(item, _Failure):
            self._thread = None
            self._walk = self._walk_from(self._consumed)
            self._raise(item.exc)
        return item

    def _raise(self, exc: BaseException):
        if isinstance(exc, (MinicaffeError, KeyboardInterrupt, SystemExit)):
            raise exc
        raise self.error(f"failed to load a batch: {type(exc).__name__}: {exc}", DataError) from exc

    def forward(self, bottom, top) -> None:
        arrays, snap, slot = self._next_batch()
        try:
            for blob, arr in zip(top, arrays):
                if blob.shape != arr.shape:
                    blob.reshape(arr.shape)
                blob.data = arr
        finally:
            if self.prefetch_count > 0 and self._thread is not None:
                self._free_q.put(slot)
        self._consumed = snap

    # ------------------------------------------------------------------ saved position
    def data_state(self):
        """Where the net's next batch starts, as a ``DataLayerState`` (layer name filled in)."""
        from minicaffe.proto import caffe_pb2

        cursor, epoch, order, rng_state = self._consumed
        state = caffe_pb2.DataLayerState(layer=self.name, cursor=cursor, epoch=epoch)
        if order is not None:
            state.order.extend(order.tolist())
        state.rng_state = json.dumps(rng_state, sort_keys=True).encode()
        return state

    def restore_data_state(self, state) -> None:
        """Continue from a position saved by :meth:`data_state` (prefetched batches dropped)."""
        n = self.num_records
        if not 0 <= state.cursor < n:
            raise self.error(
                f"saved data position {state.cursor} is outside the source's {n} records "
                "(did the data change since the snapshot?)",
                DataError,
            )
        order = None
        if len(state.order):
            if len(state.order) != n:
                raise self.error(
                    f"saved shuffle order has {len(state.order)} entries but the source has "
                    f"{n} records (did the data change since the snapshot?)",
                    DataError,
                )
            order = np.asarray(state.order, dtype=np.int64)
        cursor, epoch, cur_order, rng_state = self._consumed
        if state.rng_state:
            try:
                rng_state = json.loads(state.rng_state.decode())
                np.random.default_rng().bit_generator.state = rng_state
            except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
                raise self.error(f"saved random state is unreadable: {exc}", DataError) from None
        if order is None and self.shuffle:
            order = cur_order if cur_order is not None else self.new_order(self._walk.rng)
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        self._consumed = (int(state.cursor), int(state.epoch), order, rng_state)
        self._walk = self._walk_from(self._consumed)
