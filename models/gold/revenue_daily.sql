-- Daily revenue per country in its own currency, in EUR and in the reporting currency (catalog/gold/revenue_daily.yaml).
-- ECB reference rates are units of a currency per 1 EUR, published on TARGET business days only: a weekend or
-- holiday uses the last rate published before it, at most param('max_carry_days') back. An older rate means
-- the FX pull is behind, which stops the build (raise_error) rather than papering over it.
WITH kpis AS (
  SELECT
    date,
    country,
    -- a day without a purchase has no currency: the country's, from the model's params
    coalesce(currency, element_at({{ param('country_currency') }}, country)) AS currency,
    revenue
  FROM {{ ref('gold.daily_kpis') }}
),
daily AS (                                      -- one row per (date, country): its platforms and channels summed
  SELECT date, country, max(currency) AS currency, coalesce(sum(revenue), 0D) AS revenue
  FROM kpis
  GROUP BY date, country
),
reporting AS (
  SELECT upper(trim({{ param('reporting_currency') }})) AS currency
),
rates AS (                                      -- the ECB does not quote the euro: 1.0 on every day it published
  SELECT date, currency, rate_per_eur FROM {{ ref('silver.fx_rates') }} WHERE currency <> 'EUR'
  UNION ALL
  SELECT DISTINCT date, 'EUR', 1D FROM {{ ref('silver.fx_rates') }}
),
wanted AS (                                     -- every (day, currency) a rate is needed for
  SELECT date, currency FROM daily
  UNION
  SELECT d.date, r.currency FROM daily d CROSS JOIN reporting r
),
rate_on AS (                                    -- the rate of that day, or the last one before it
  SELECT w.date, w.currency, max_by(r.rate_per_eur, r.date) AS rate_per_eur
  FROM wanted w
  LEFT JOIN rates r
    ON r.currency = w.currency
   AND r.date <= w.date
   AND r.date >= date_sub(w.date, {{ param('max_carry_days') }})
  GROUP BY w.date, w.currency
),
joined AS (
  SELECT d.*, local.rate_per_eur AS local_rate, target.rate_per_eur AS target_rate, r.currency AS reporting
  FROM daily d
  CROSS JOIN reporting r
  LEFT JOIN rate_on local ON local.date = d.date AND local.currency = d.currency
  LEFT JOIN rate_on target ON target.date = d.date AND target.currency = r.currency
),
missing AS (                                    -- revenue without a rate: named, oldest first
  SELECT
    count(*) AS n,
    array_join(
      slice(
        transform(
          array_sort(collect_set(struct(date, coalesce(currency, 'no currency') AS currency))),
          m -> concat(m.currency, ' on ', CAST(m.date AS STRING))
        ),
        1, 10
      ),
      ', '
    ) AS shown,
    max(reporting) AS reporting
  FROM joined
  WHERE revenue <> 0 AND (local_rate IS NULL OR target_rate IS NULL)
)
SELECT
  j.date,
  j.country,
  j.currency,
  j.revenue,
  j.local_rate                                  AS rate_per_eur,
  CASE WHEN j.revenue = 0 THEN 0D ELSE j.revenue / j.local_rate END AS revenue_eur,
  j.reporting                                   AS reporting_currency,
  CASE WHEN j.revenue = 0 THEN 0D ELSE j.revenue / j.local_rate * j.target_rate END AS revenue_reporting
FROM joined j
CROSS JOIN missing m
WHERE m.n = 0
   OR raise_error(concat(
        'no FX rate within ', {{ param('max_carry_days') }}, ' days for ', m.shown, ' (reporting ', m.reporting,
        '): pull newer rates (`lakehouse api pull --source fx_rates`) and rebuild silver fx_rates'
      ))
