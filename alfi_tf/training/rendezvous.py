"""Before a multi-worker strategy is created: every task of the cluster answers, or one clear error.

`tf.distribute.MultiWorkerMirroredStrategy()` waits for every task of `TF_CONFIG`'s cluster inside
one C++ call that holds Python's GIL: a task that never starts (a mistyped host or port, a job that
failed to launch) leaves the others waiting for ever, deaf to Ctrl-C and SIGTERM alike.
`wait_for_peers` holds the same rendezvous first, in Python and with a timeout. Each task listens on
its own `TF_CONFIG` address and connects to every other task's, sending its name; it is done once
it has reached every peer and heard from each. No task closes its listener before every peer has
reached it, so none waits for a listener already closed. The strategy's server then binds the
port (the listener reuses addresses, and the connecting side closes first, so the port is free).
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Dict, Set

#: Seconds between attempts to reach a peer that is not listening yet.
RETRY_SECONDS = 0.5


def _task_names(config: Dict[str, Any]) -> Dict[str, str]:
  """`{"worker:1": "host:port", ...}` for every task of the cluster."""
  return {f"{job}:{index}": address for job, addresses in sorted(config["cluster"].items())
          for index, address in enumerate(addresses)}


def _split(address: str):
  host, _, port = address.rpartition(":")
  return host.strip("[]"), int(port)


def _listen(name: str, address: str) -> socket.socket:
  """A listener on `address`'s port, on every interface (the host may name this machine any way)."""
  port = _split(address)[1]
  try:
    if socket.has_dualstack_ipv6():
      return socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True)
    return socket.create_server(("", port))
  except OSError as error:
    raise RuntimeError(f"multi-worker rendezvous: this task ({name}) cannot listen on its "
                       f"TF_CONFIG address {address}: {error.strerror or error}") from None


class _Heard:
  """The names of the peers that have reached this task, added from the listening thread."""

  def __init__(self):
    self._lock = threading.Lock()
    self._names: Set[str] = set()

  def add(self, name: str) -> None:
    with self._lock:
      self._names.add(name)

  def names(self) -> Set[str]:
    with self._lock:
      return set(self._names)


def _hear(listener: socket.socket, heard: _Heard, done: threading.Event) -> None:
  """Accepts the peers' connections until `done`, adding the name each sends to `heard`."""
  listener.settimeout(RETRY_SECONDS)
  while not done.is_set():
    try:
      connection, _ = listener.accept()
    except socket.timeout:
      continue
    with connection:
      connection.settimeout(10 * RETRY_SECONDS)
      message = b""
      try:
        while chunk := connection.recv(256):   # until the peer closes: it closes first
          message += chunk
      except OSError:
        continue
      heard.add(message.decode("utf-8", "replace"))


def _reach(name: str, address: str) -> bool:
  """Whether `address` accepted a connection and `name`."""
  try:
    with socket.create_connection(_split(address), timeout=2 * RETRY_SECONDS) as connection:
      connection.sendall(name.encode("utf-8"))
    return True
  except OSError:   # refused (not started yet), unreachable, unknown host
    return False


def wait_for_peers(config: Dict[str, Any], timeout: float) -> None:
  """Returns once every task of `config` (a `parse_tf_config` result) has met this one.

  Raises:
    RuntimeError: its own address cannot be listened on, or some task has not answered within
      `timeout` seconds (named, with its address).
  """
  tasks = _task_names(config)
  name = f"{config['task']['type']}:{config['task']['index']}"
  peers = {peer: address for peer, address in tasks.items() if peer != name}
  if not peers:
    return
  wanted, reached, heard = set(peers), set(), _Heard()
  done = threading.Event()
  with _listen(name, tasks[name]) as listener:
    hearing = threading.Thread(target=_hear, args=(listener, heard, done), daemon=True)
    hearing.start()
    deadline = time.monotonic() + timeout
    try:
      while True:
        reached.update(peer for peer in sorted(wanted - reached) if _reach(name, peers[peer]))
        met = reached & heard.names()
        if met >= wanted:
          return
        if time.monotonic() > deadline:
          missing = ", ".join(f"{peer} ({peers[peer]})" for peer in sorted(wanted - met))
          raise RuntimeError(
              f"multi-worker rendezvous: {missing} did not answer within {timeout:g} s "
              f"(--worker_timeout); is every task started, with the same TF_CONFIG cluster? "
              f"(this task: {name}, {tasks[name]})")
        time.sleep(RETRY_SECONDS)
    finally:
      done.set()
      hearing.join()
