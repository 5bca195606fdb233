-- Monthly EUR reference rates per currency: the mean, the range and the month's last fixing.
-- A gold model (catalog/gold/fx_monthly.yaml, section model): ref() resolves a table in the current environment.
SELECT
  CAST(date_trunc('month', date) AS DATE)       AS month,
  currency,
  avg(rate_per_eur)                             AS mean_rate_per_eur,
  min(rate_per_eur)                             AS min_rate_per_eur,
  max(rate_per_eur)                             AS max_rate_per_eur,
  max_by(rate_per_eur, date)                    AS last_rate_per_eur,
  count(*)                                      AS fixings
FROM {{ ref('silver.fx_rates') }}
GROUP BY 1, 2
