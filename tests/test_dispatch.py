"""Longest-first dispatch of a round's clients in the Simulation Engine (engine.longest_first)."""

from semanticfl.engine.exchanges import longest_first_waves


def makespan(waves, sizes, workers):
    """When the last of ``workers`` FIFO workers finishes, taking clients in the waves' order."""
    finish = [0] * workers
    for client in (c for wave in waves for c in wave):
        finish[finish.index(min(finish))] += sizes[client]
    return max(finish)


# Client sizes of cifar10_cnn at Dir(0.1), seed 0 (10 clients).
DIR01 = dict(enumerate([6192, 4699, 6620, 935, 6589, 3222, 7086, 5022, 8602, 1033]))


def test_waves_hold_the_largest_clients_first_in_groups_of_the_workers():
    waves = longest_first_waves(DIR01, parallel=2)
    assert waves == [[8, 6], [2, 4], [0, 7], [1, 5], [9, 3]]


def test_longest_first_evens_out_two_workers_where_id_order_does_not():
    ideal = sum(DIR01.values()) / 2
    in_id_order = makespan([list(DIR01)], DIR01, 2)
    longest_first = makespan(longest_first_waves(DIR01, 2), DIR01, 2)
    assert in_id_order / ideal > 1.12  # client 8 (8,602 images) starts last but one
    assert longest_first / ideal < 1.02


def test_waves_past_the_cap_are_pushed_with_the_last_one():
    sizes = {client: 1000 - client for client in range(100)}
    waves = longest_first_waves(sizes, parallel=4, max_waves=8)
    assert len(waves) == 8 and [len(w) for w in waves[:7]] == [4] * 7 and len(waves[7]) == 100 - 28
    assert [c for wave in waves for c in wave] == list(range(100))


def test_equal_sizes_keep_id_order():
    assert longest_first_waves({3: 5, 1: 5, 2: 5}, parallel=2) == [[1, 2], [3]]
