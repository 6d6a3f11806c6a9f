-- What `ehrprep report` reads.

-- name: loss_curves
SELECT run_id, model, step, loss FROM train_steps JOIN train_runs USING (run_id)
ORDER BY run_id, step;

-- name: train_summary
SELECT r.run_id, r.model, coalesce(r.device, '?'), r.status, r.steps_done,
       (SELECT loss FROM train_steps s WHERE s.run_id = r.run_id ORDER BY step DESC LIMIT 1),
       (SELECT median(tokens_per_s) FROM train_steps s WHERE s.run_id = r.run_id)
FROM train_runs r ORDER BY r.started_at;

-- name: eval_summary
SELECT model, task, fraction, metric, mean, coalesce(sd, 0), seeds, majority FROM eval_summary
ORDER BY task, metric, model, fraction;

-- name: paper
-- What the fraction plots draw of the paper's results: each model of the limited-data
-- tables as a curve, the in-context models as flat lines, and Table 3's base-size models as
-- points at the full training set.
SELECT model, task, fraction, metric, value,
       CASE WHEN model LIKE '%in-context' THEN 'flat'
            WHEN source = 'Table 3' THEN 'point' ELSE 'curve' END AS kind
FROM paper_results
WHERE source <> 'Table 3' OR size = 'base' OR model LIKE '%in-context'
ORDER BY task, metric, kind, model, fraction;
