"""serve's slots: at most N requests score at once, and the others are served in the order they asked."""

import threading
import time

from covidct.inference.batching import FairSlots


def queued(slots: FairSlots, k: int) -> None:
    for _ in range(2000):
        if len(slots.waiters) >= k:
            return
        time.sleep(0.001)
    raise AssertionError(f"{k} waiters never queued")


def test_waiters_are_served_in_the_order_they_asked_and_a_newcomer_waits_its_turn():
    slots, order = FairSlots(1), []

    def request(name: str) -> None:
        with slots:
            order.append(name)

    slots.__enter__()  # the slot is taken
    threads = []
    for k, name in enumerate("abcd", start=1):
        threads.append(threading.Thread(target=request, args=(name,)))
        threads[-1].start()
        queued(slots, k)
    slots.__exit__(None, None, None)  # handed to "a", not left free for whoever comes next
    assert slots.free == 0
    late = threading.Thread(target=request, args=("late",))
    late.start()
    for t in [*threads, late]:
        t.join(5)
    assert order == ["a", "b", "c", "d", "late"]
    assert slots.free == 1 and not slots.waiters


def test_at_most_n_hold_a_slot_at_once():
    slots, inside, most, lock = FairSlots(2), [0], [0], threading.Lock()

    def request() -> None:
        with slots:
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.005)
            with lock:
                inside[0] -= 1

    threads = [threading.Thread(target=request) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert most[0] == 2 and slots.free == 2
