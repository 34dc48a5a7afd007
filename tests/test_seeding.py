"""The run's seed derivations give the values results were recorded with (a change here changes them)."""

from semanticfl.seeding import Stream, TeacherStream, derive_seed, derive_seed32, derive_teacher_seed


def test_engine_seeds_are_the_recorded_ones():
    assert derive_seed(0, 1, 2) == 1535930435702422785  # seed 0, round 1, client 2: its local generator
    assert derive_seed(3, Stream.TRAIN_FRACTION) == 8707567073520276159
    assert derive_seed(0, 1, 2) != derive_seed(0, 2, 1)


def test_teacher_seeds_take_any_integer_key_and_are_the_recorded_ones():
    assert derive_teacher_seed(0, TeacherStream.NOISE, 5, 0) == 11838125973652556101
    assert derive_teacher_seed(7, TeacherStream.CONDITION, -1) == 950444824424090038
    assert derive_teacher_seed(0, 1, 2**40) != derive_teacher_seed(0, 1, 0)


def test_fedafd_seeds_are_32_bit_and_the_recorded_ones():
    assert derive_seed32(4, 9, Stream.FEDAFD_CLIENT_INIT) == 3052543947
    assert 0 <= derive_seed32(0, Stream.FEDAFD_SERVER) < 2**32
