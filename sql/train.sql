-- Pretraining runs, their steps and checkpoints, as the trainer plugin reports them.

-- name: schema
CREATE TABLE IF NOT EXISTS train_runs (
    run_id           VARCHAR NOT NULL,
    build_id         VARCHAR NOT NULL, -- joins build_runs, shards, tokenizers
    tokenizer_sha256 VARCHAR NOT NULL,
    out              VARCHAR NOT NULL, -- the run folder
    model            VARCHAR NOT NULL, -- preset name or --init folder
    config           VARCHAR NOT NULL, -- JSON: the request sent to the plugin
    model_config     VARCHAR,          -- JSON: the T5 config trained
    device           VARCHAR,
    parameters       BIGINT,
    plugin           VARCHAR NOT NULL,
    plugin_version   VARCHAR NOT NULL,
    ehrprep_version  VARCHAR NOT NULL,
    started_at       TIMESTAMP NOT NULL,
    finished_at      TIMESTAMP,
    status           VARCHAR NOT NULL, -- running | finished | cancelled | failed
    steps_done       BIGINT NOT NULL
);
-- The dropout trained with (catalogs from before it was recorded gain the column).
ALTER TABLE train_runs ADD COLUMN IF NOT EXISTS dropout DOUBLE;
-- Data parallelism: processes, sequences per micro-batch on each, sequences per optimizer
-- step over all of them (a resumed run records its latest launch).
ALTER TABLE train_runs ADD COLUMN IF NOT EXISTS world_size BIGINT;
ALTER TABLE train_runs ADD COLUMN IF NOT EXISTS batch_per_rank BIGINT;
ALTER TABLE train_runs ADD COLUMN IF NOT EXISTS global_batch BIGINT;
ALTER TABLE train_runs ADD COLUMN IF NOT EXISTS dist_backend VARCHAR; -- nccl | gloo | NULL: one process
CREATE TABLE IF NOT EXISTS train_steps (
    run_id          VARCHAR NOT NULL,
    step            BIGINT NOT NULL,
    loss            DOUBLE NOT NULL,
    lr              DOUBLE NOT NULL,
    grad_norm       DOUBLE NOT NULL,
    tokens          BIGINT NOT NULL, -- encoder input tokens in this step
    tokens_per_s    DOUBLE NOT NULL,
    elapsed_s       DOUBLE NOT NULL, -- since this process started the run
    validation_loss DOUBLE           -- on steps where validation ran
);
CREATE TABLE IF NOT EXISTS checkpoints (
    run_id          VARCHAR NOT NULL,
    step            BIGINT NOT NULL,
    path            VARCHAR NOT NULL,
    validation_loss DOUBLE,
    sha256          VARCHAR NOT NULL, -- of model.safetensors
    created_at      TIMESTAMP NOT NULL
);

-- name: build_exists
SELECT count(*) FROM build_runs WHERE build_id = ? AND status = 'succeeded';

-- name: insert_run
INSERT INTO train_runs (run_id, build_id, tokenizer_sha256, out, model, config, plugin,
                        plugin_version, ehrprep_version, started_at, status, steps_done)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, now(), 'running', 0);

-- name: set_world
UPDATE train_runs SET world_size = ?, batch_per_rank = ?, global_batch = ? WHERE run_id = ?;

-- name: run_of_folder
SELECT run_id FROM train_runs WHERE out = ? ORDER BY started_at DESC LIMIT 1;

-- name: run_exists
SELECT count(*) FROM train_runs WHERE run_id = ?;

-- The folder may have moved: the row follows it.
-- name: reopen_run
UPDATE train_runs SET status = 'running', finished_at = NULL, config = ?, out = ? WHERE run_id = ?;

-- Steps after the checkpoint a resumed run starts from are run again; drop their old rows.
-- name: forget_steps_after
DELETE FROM train_steps WHERE run_id = ? AND step > ?;

-- name: started
UPDATE train_runs SET device = ?, parameters = ?, model_config = ?, dropout = ?, dist_backend = ?
WHERE run_id = ?;

-- name: insert_step
INSERT INTO train_steps VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL);

-- name: set_validation
UPDATE train_steps SET validation_loss = ? WHERE run_id = ? AND step = ?;

-- name: insert_checkpoint
INSERT INTO checkpoints VALUES (?, ?, ?, ?, ?, now());

-- name: finish_run
UPDATE train_runs SET status = ?, finished_at = now(),
    steps_done = (SELECT coalesce(max(step), 0) FROM train_steps WHERE run_id = ?)
WHERE run_id = ?;
