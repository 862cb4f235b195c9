// Times are printed in UTC; hovering one shows the reader's local time (title), for <time> and chart points.
"use strict";
(function () {
  function local(iso) {
    var d = new Date(iso);
    return isNaN(d) ? "" : "local time: " + d.toLocaleString();
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("time[datetime]").forEach(function (el) {
      el.title = local(el.getAttribute("datetime"));
    });
    document.querySelectorAll("svg circle.pt[data-t] > title").forEach(function (el) {
      el.textContent += " (" + local(el.parentNode.getAttribute("data-t")) + ")";
    });
  });
})();
