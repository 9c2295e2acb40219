"""The six phases of one CGPO step (CGPO paper Algorithm 2; cgpo-algorithms.md §9), one module each.

A step of :class:`cgpo.trainer.CGPOTrainer` reads top to bottom::

    drawn    = B_l prompts of every task l              (the trainer's seeded, resumable samplers)
    rollouts = rollout.generate_rollouts(drawn)         1. K_l samples per prompt, and each prompt's a_bar
    judged   = judge.judge_rollouts(rollouts)           2. the task's mixture of judges (Kleene AND)
    scored   = reward.score_rollouts(judged)            3. raw reward r(s, a), calibrated sigmoid(r(s,a) - r(s,a_bar))
    logprobs = loss.sample_logprobs(rollouts)           4a. the samples' log-probs under pi_w and pi_ref
    losses   = loss.task_losses(scored, logprobs)       4b. each task optimizer's loss L_l
    updates  = backward.weighted_backward(losses)       5. backward of sum_l rho_l L_l (normalized across processes)
    norm     = update.optimizer_step(...)               6. one clip, one AdamW step, one scheduler step

Phases 2-3 need only the rollouts and only 4b reads them, so with ``training.overlap_judging`` they run in a worker thread while 4a runs (:mod:`cgpo.phases.overlap`), with the same results.

Each phase is a plain function from the dataclasses of :mod:`cgpo.phases.batches` to the next ones; none
of them keeps state. ``cgpo eval`` (:mod:`cgpo.evaluation`) uses the same prompt filter, generation
grouping, judging and metrics functions.
"""
