from server.engine.prefix import MIN_COPY_GAIN, MIN_PREFIX_GAIN, Placement, SlotView, place, should_wait

PROMPT = list(range(100))


def test_no_free_sequence_means_no_placement():
    assert place(PROMPT, [SlotView([], busy=True)]) is None


def test_free_sequence_holding_the_most_of_the_prompt_is_chosen():
    slots = [SlotView(PROMPT[:10]), SlotView(PROMPT[:50]), SlotView([7, 7])]
    assert place(PROMPT, slots).slot == 1
    assert place(PROMPT, slots).reuse == 50


def test_a_busy_sequence_can_lend_its_prefix():
    slots = [SlotView(PROMPT[:80], busy=True), SlotView(PROMPT[:10])]
    placement = place(PROMPT, slots)
    assert (placement.slot, placement.source, placement.reuse) == (1, 0, 80)


def test_the_last_prompt_token_is_always_evaluated():
    assert place(PROMPT, [SlotView([*PROMPT, 1, 2])]).reuse == len(PROMPT) - 1


def test_a_long_cached_prefix_is_not_cut_for_a_prompt_that_shares_little_while_a_sequence_is_empty():
    system = list(range(1000, 2000))  # a system prompt's KV (restored from disk, say)
    prompt = [*system[: MIN_COPY_GAIN - 1], 7, 7, 7]  # shares only the chat template's first tokens
    placement = place(prompt, [SlotView(system, last_used=5), SlotView([]), SlotView([])])
    assert placement.slot != 0 and placement.source == placement.slot and placement.reuse == 0  # too little to copy
    same = [*system, 7, 7]  # the same system prompt: taken where it is, nothing lost
    assert place(same, [SlotView(system), SlotView([])]) == Placement(slot=0, source=0, reuse=1000)
    busy = [SlotView(system, busy=True), SlotView([])]  # lent to another sequence when it saves enough
    assert place(same, busy) == Placement(slot=1, source=0, reuse=1000)
    assert place(prompt, [SlotView(system)]).slot == 0  # no other free sequence: it is cut after all


def test_least_recently_used_free_sequence_is_evicted_first():
    slots = [SlotView([5], last_used=9), SlotView([6], last_used=2), SlotView([8], last_used=5)]
    assert place(PROMPT, slots).slot == 1


def test_wait_for_a_prefix_being_prefilled_only_when_it_is_worth_it():
    prefilling = SlotView(PROMPT[:10], pending=PROMPT[10:90], busy=True)
    assert should_wait(PROMPT, [prefilling, SlotView([])], available=0)
    assert not should_wait(PROMPT, [prefilling], available=90 - MIN_PREFIX_GAIN + 1)
    unrelated = SlotView([], pending=[999] * 50, busy=True)
    assert not should_wait(PROMPT, [unrelated, SlotView([])], available=0)


def test_a_shared_prefix_worth_a_copy_is_copied_into_an_empty_sequence_rather_than_prefilled_again():
    # The previous request's sequence holds the template's default system prompt, its own question and its reply;
    # the next request shares the system prompt only. Its sequence keeps the rest (the conversation may go on).
    system = list(range(1000, 1028))
    previous = [*system, *range(14), *range(500, 564)]
    prompt = [*system, *range(100, 114)]
    placement = place(prompt, [SlotView(previous, last_used=3), SlotView([]), SlotView([])])
    assert placement.slot != 0 and placement.source == 0 and placement.reuse == 28
    assert place([*system[:MIN_COPY_GAIN], 7], [SlotView(previous), SlotView([])]).reuse == MIN_COPY_GAIN
    assert place([*system[: MIN_COPY_GAIN - 1], 7], [SlotView(previous), SlotView([])]).reuse == 0
