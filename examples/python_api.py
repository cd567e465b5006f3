"""metalearn from plain Python, no Hydra: build, train briefly, evaluate.

    python examples/python_api.py

Every piece is an object you can swap: a task family (`make_omniglot(root)` for
images), a network (`make_conv4`), an algorithm and its options
(`make_maml(..., first_order=True)`), any optax optimiser.
`tests/test_examples.py` runs this file, so it stays current.
"""

import jax
import optax

import metalearn as ml


def main(steps: int = 2000) -> dict[str, float]:
    tasks = ml.make_sinusoid(amp_max=0.5)  # the tutorial's sinusoids
    family = tasks.train
    model = ml.make_mlp(family.input_shape, family.output_size, hidden_sizes=(40, 40))
    maml = ml.make_maml(model, family, inner_lr=0.1, inner_steps=1)
    optimizer = ml.flat_optimizer(optax.adam(1e-3))

    # 4 tasks per meta-step, K = 20 support and 20 query points
    step = ml.make_train_step(
        maml, family, optimizer, tasks_per_step=4, num_support=20, num_query=20
    )
    window = ml.make_train_window(step)
    state = ml.init_train_state(maml, optimizer, jax.random.key(0))
    evaluate = ml.make_evaluate(
        maml, tasks.test, num_tasks=200, num_support=20, num_query=100, num_steps=5
    )

    def score(state):
        scores = evaluate(
            state.meta_params,
            state.model_state,
            tasks.test.data,
            jax.random.key(1),  # the held-out tasks
            jax.random.key(2),  # adaptation's own randomness
        )
        return ml.flatten_scores(scores)

    result = ml.fit(
        state,
        window,
        family.data,
        ml.Schedule(num_steps=steps, log_every=500),
        evaluate=score,
        on_metrics=lambda step, metrics: print(step, metrics["train/meta_loss"]),
    )
    print(
        "MSE after 0 / 1 / 5 steps: "
        + " / ".join(f"{result.summary[f'eval/mse@step{k}']:.4f}" for k in (0, 1, 5))
    )
    return result.summary


if __name__ == "__main__":
    main()
