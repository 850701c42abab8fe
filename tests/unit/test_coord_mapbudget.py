"""The peer-map budget: maps start in registration order while the bytes not yet drained stay
under the budget; draining or a connection's end makes room; a forgotten connection never starts."""

from meshvpn.coord.mapbudget import MapBudget


def test_maps_start_in_order_while_there_is_room_and_draining_makes_more():
    budget = MapBudget(1000)
    for conn in "abcd":
        budget.wait(conn)
    assert budget.next() == "a"
    budget.sent("a", 600)
    assert budget.next() == "b"  # 600 < 1000: one more map may start and pass the budget
    budget.sent("b", 600)
    assert budget.next() is None and budget.in_flight == 1200 and len(budget) == 2
    budget.drained("a")
    assert budget.next() == "c"
    budget.sent("c", 500)
    assert budget.next() is None and budget.peak == 1200
    budget.drained("a")  # draining twice gives nothing back twice
    assert budget.in_flight == 1100


def test_a_connection_that_ends_waits_no_longer_and_gives_its_bytes_back():
    budget = MapBudget(100)
    budget.wait("a")
    budget.wait("b")
    budget.wait("c")
    assert budget.next() == "a"
    budget.sent("a", 500)
    budget.forget("b")
    assert not budget.waiting("b") and budget.waiting("c")
    budget.forget("a")
    assert budget.in_flight == 0 and budget.next() == "c" and budget.next() is None
