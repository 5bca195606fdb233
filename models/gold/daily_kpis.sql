-- Daily KPIs per platform, channel and country, with the country's currency (catalog/gold/daily_kpis.yaml).
-- date is the session's start date (UTC). currency is the country's currency seen on any purchasing session of
-- that country and day (null when none purchased), so revenue is summed in one currency per row.
-- active_users counts distinct users in the row: a user active on two platforms counts in both rows, so do not
-- add rows up to get daily users. A session reaches a step when it has at least one event of that type.
WITH sessions AS (
  SELECT
    *,
    max(currency) OVER (PARTITION BY session_date, country) AS country_currency
  FROM {{ ref('gold.sessions') }}
)
SELECT
  session_date                                  AS date,
  platform,
  channel,
  country,
  country_currency                              AS currency,
  count(DISTINCT user_id)                       AS active_users,
  count(*)                                      AS sessions,
  count_if(product_views > 0)                   AS reached_product_view,
  count_if(add_to_carts > 0)                    AS reached_add_to_cart,
  count_if(checkouts > 0)                       AS reached_checkout,
  count_if(converted)                           AS converted_sessions,
  coalesce(sum(purchases), 0)                   AS orders,
  coalesce(sum(revenue), 0D)                    AS revenue,
  count_if(converted) / count(*)                AS conversion_rate
FROM sessions
GROUP BY session_date, platform, channel, country, country_currency
