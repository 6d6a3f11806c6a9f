-- Finetuning and evaluation runs, their metrics and predictions, and the paper's numbers.

-- name: schema
CREATE TABLE IF NOT EXISTS eval_runs (
    eval_run_id      VARCHAR NOT NULL,
    task             VARCHAR NOT NULL, -- mednli | radqa | clip
    fraction         DOUBLE NOT NULL,  -- of the training set
    seed             BIGINT NOT NULL,
    checkpoint       VARCHAR NOT NULL, -- the pretrained checkpoint finetuned
    train_run_id     VARCHAR,          -- joins train_runs; NULL for outside checkpoints
    build_id         VARCHAR,          -- joins build_runs, shards, tokenizers
    tokenizer_sha256 VARCHAR NOT NULL,
    model            VARCHAR NOT NULL, -- a name for reports: the run's model or the folder
    out              VARCHAR NOT NULL, -- the finetuning folder
    config           VARCHAR NOT NULL, -- JSON
    train_examples   BIGINT NOT NULL,
    truncated        BIGINT NOT NULL,  -- inputs cut to the task's maximum length
    best_epoch       BIGINT,
    started_at       TIMESTAMP NOT NULL,
    finished_at      TIMESTAMP,
    status           VARCHAR NOT NULL  -- running | finished | cancelled | failed
);
CREATE TABLE IF NOT EXISTS eval_metrics (
    eval_run_id VARCHAR NOT NULL,
    split       VARCHAR NOT NULL, -- train (loss per epoch) | validation (per epoch) | test (best epoch)
                                  -- | majority (chance: the most frequent training target, scored
                                  --   on the same examples as test)
    epoch       BIGINT NOT NULL,  -- 1-based; 0 for majority
    metric      VARCHAR NOT NULL, -- accuracy | exact_match | f1 | micro_f1 | macro_f1 | loss
    value       DOUBLE NOT NULL
);
CREATE TABLE IF NOT EXISTS eval_predictions (
    eval_run_id  VARCHAR NOT NULL,
    example_id   VARCHAR NOT NULL,
    input_sha256 VARCHAR NOT NULL,
    prediction   VARCHAR NOT NULL,
    reference    VARCHAR NOT NULL,
    correct      BOOLEAN NOT NULL  -- exact match after the task's normalization
);
CREATE TABLE IF NOT EXISTS paper_results (
    model    VARCHAR NOT NULL,
    size     VARCHAR NOT NULL, -- base | large | xl | other
    params   VARCHAR NOT NULL,
    task     VARCHAR NOT NULL,
    fraction DOUBLE NOT NULL,
    metric   VARCHAR NOT NULL,
    value    DOUBLE NOT NULL
);
-- Mean and spread over seeds of each test metric, beside chance (the majority rows) where
-- the runs recorded it.
CREATE OR REPLACE VIEW eval_summary AS
SELECT r.model, r.checkpoint, r.task, r.fraction, m.metric,
       avg(m.value) AS mean, stddev_samp(m.value) AS sd, count(*) AS seeds,
       avg(c.value) AS majority
FROM eval_runs r JOIN eval_metrics m USING (eval_run_id)
LEFT JOIN eval_metrics c ON c.eval_run_id = m.eval_run_id AND c.split = 'majority'
 AND c.metric = m.metric
WHERE m.split = 'test' AND r.status = 'finished'
GROUP BY ALL;
-- Our test results beside the paper's for the same task, fraction, metric and model size.
CREATE OR REPLACE VIEW eval_vs_paper AS
SELECT s.model, s.task, s.fraction, s.metric, s.mean, s.seeds,
       p.model AS paper_model, p.value AS paper_value
FROM eval_summary s
JOIN paper_results p ON p.task = s.task AND p.fraction = s.fraction AND p.metric = s.metric
 AND p.size = CASE WHEN s.model LIKE '%large%' THEN 'large'
                   WHEN s.model LIKE '%base%' THEN 'base' ELSE 'other' END;

-- The paper's Table 3 (mean of 3 seeds, full training sets).
-- name: paper_results
DELETE FROM paper_results;
INSERT INTO paper_results
WITH t(model, size, params, mednli_acc, radqa_em, radqa_f1, clip_micro, clip_macro) AS (VALUES
    ('T5-Base', 'base', '220M', .818, .479, .662, .767, .594),
    ('Clinical-T5-Base-Ckpt', 'base', '220M', .852, .507, .689, .772, .605),
    ('Clinical-T5-Base', 'base', '220M', .855, .531, .710, .793, .652),
    ('T5-Large', 'large', '770M', .849, .537, .700, .779, .629),
    ('Clinical-T5-Large', 'large', '770M', .872, .550, .745, .800, .663),
    ('BioClinRoBERTa', 'other', '345M', .900, .604, .759, .805, .707),
    ('GatorTron', 'other', '345M', .883, .583, .759, .791, .690),
    ('T5-XL', 'xl', '3B', .869, .568, .729, .780, .640),
    ('GPT-3 in-context', 'other', '175B', .805, .362, .619, .154, .146))
SELECT model, size, params, 'mednli', 1.0, 'accuracy', mednli_acc FROM t
UNION ALL SELECT model, size, params, 'radqa', 1.0, 'exact_match', radqa_em FROM t
UNION ALL SELECT model, size, params, 'radqa', 1.0, 'f1', radqa_f1 FROM t
UNION ALL SELECT model, size, params, 'clip', 1.0, 'micro_f1', clip_micro FROM t
UNION ALL SELECT model, size, params, 'clip', 1.0, 'macro_f1', clip_macro FROM t;

-- name: find_run
SELECT eval_run_id FROM eval_runs WHERE out = ? ORDER BY started_at DESC LIMIT 1;

-- name: insert_run
INSERT INTO eval_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, now(), NULL, 'running');

-- name: reopen_run
UPDATE eval_runs SET status = 'running', finished_at = NULL WHERE eval_run_id = ?;

-- name: forget_epochs_from
DELETE FROM eval_metrics WHERE eval_run_id = ? AND (epoch >= ? OR split IN ('test', 'majority'));

-- name: forget_predictions
DELETE FROM eval_predictions WHERE eval_run_id = ?;

-- name: insert_metric
INSERT INTO eval_metrics VALUES (?, ?, ?, ?, ?);

-- name: insert_prediction
INSERT INTO eval_predictions VALUES (?, ?, ?, ?, ?, ?);

-- name: finish_run
UPDATE eval_runs SET status = ?, finished_at = now(), best_epoch = ? WHERE eval_run_id = ?;

-- name: test_metrics
SELECT metric, value FROM eval_metrics WHERE eval_run_id = ? AND split = 'test' ORDER BY metric;

-- name: origin_of
SELECT fraction, seed, train_run_id, build_id, model FROM eval_runs WHERE out = ?
ORDER BY started_at LIMIT 1;

-- name: train_run_of
SELECT run_id, model FROM train_runs WHERE out = ? ORDER BY started_at DESC LIMIT 1;
